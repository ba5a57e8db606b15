"""Golden cases for loading the DiT from real model files (component `wan_dit_file`).

The tiny official `WanModel`s of `cases/dit.py`, saved as users' files are laid out, and loaded
by the runner through `WanModel::load` (memory-mapped, layout detected from the files):

- ComfyUI `fp8_scaled` (older scheme): keys prefixed `model.diffusion_model.`, every Linear
  weight stored as torch.float8_e4m3fn with a float32 0-dim `scale_weight` beside it, a
  `scaled_fp8` marker tensor (an empty float8_e4m3fn tensor: ComfyUI reads the float8 type from
  its dtype), and the other tensors (biases, norms, modulation, patch embedding) in bfloat16.
- ComfyUI `comfy_quant` (newer scheme): `weight_scale` (float32 0-dim) per quantized Linear, a
  `comfy_quant` uint8 tensor per layer holding the JSON `{"format": "float8_e4m3fn"}`, and the
  `_quantization_metadata` header entry listing the layers (ComfyUI's QUANTIZATION.md).
- The official sharded release: `diffusion_pytorch_model-0000N-of-00002.safetensors`, the
  `.index.json` weight map and the official `config.json`, in a folder.

Quantization is per-tensor absmax: scale = max|w| / 448, stored = (w / scale).to(float8_e4m3fn).
The expected outputs come from the official model whose weights are the dequantized values
`stored.to(float32) * scale` (ComfyUI's dequantization), so the float32 comparison is exact up to
summation order; a loader that drops the scale is off by a factor of about 1/scale (hundreds).
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import save, save_file

import common
from cases.dit import TINY, _config, _official, _randomize, _tokens
from wan_shims import load_wan

FP8 = torch.float8_e4m3fn
PREFIX = "model.diffusion_model."


def _linear_names(model: torch.nn.Module) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))


def _quantize(model: torch.nn.Module, scale_key: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Quantizes the model in place to what the file holds; returns the file's state dict."""
    linears = _linear_names(model)
    state = {}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            layer = name.rsplit(".", 1)[0]
            if layer in linears and name.endswith(".weight"):
                scale = (p.abs().max() / torch.finfo(FP8).max).to(torch.float32)
                stored = (p / scale).to(FP8)
                state[name] = stored
                state[f"{layer}.{scale_key}"] = scale.reshape(())
                p.copy_(stored.to(torch.float32) * scale)
            else:
                stored = p.to(torch.bfloat16)
                state[name] = stored
                p.copy_(stored.to(torch.float32))
    return state, linears


def _t2v_inputs(gen: torch.Generator, lat=(16, 2, 4, 4), context_len=6):
    x = torch.randn((1, *lat), generator=gen)
    context = torch.randn((1, context_len, TINY["text_dim"]), generator=gen)
    return x, context


def _case_scaled_fp8(seed: int) -> None:
    model, gen = _official("i2v", 36, 16, seed)
    state, _ = _quantize(model, "scale_weight")
    state = {PREFIX + k: v for k, v in state.items()}
    state[PREFIX + "scaled_fp8"] = torch.empty(0, dtype=FP8)
    lat = (16, 2, 4, 4)
    x = torch.randn((1, *lat), generator=gen)
    y = torch.randn((1, 20, *lat[1:]), generator=gen)
    context = torch.randn((1, 6, TINY["text_dim"]), generator=gen)
    t = torch.tensor([812], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(lat), y=list(y))
    common.write_case(
        "files_dit_fp8_scaled", component="wan_dit_file",
        description="ComfyUI fp8_scaled i2v file: float8_e4m3fn Linear weights + scale_weight, scaled_fp8 marker, bf16 rest, model.diffusion_model. prefix; t=812",
        weights={"wan_i2v_fp8_scaled.safetensors": state},
        inputs={"x": x, "y": y, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=dict(path="wan_i2v_fp8_scaled.safetensors", **_config("i2v", 36, 16)), seed=seed)


def _case_comfy_quant(seed: int) -> None:
    model, gen = _official("t2v", 16, 16, seed)
    state, linears = _quantize(model, "weight_scale")
    for layer in linears:
        state[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    state = {PREFIX + k: v.contiguous() for k, v in state.items()}
    metadata = {"_quantization_metadata": json.dumps({
        "format_version": "1.0",
        "layers": {PREFIX + layer: {"format": "float8_e4m3fn"} for layer in linears},
    })}
    x, context = _t2v_inputs(gen)
    t = torch.tensor([333], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    common.write_case(
        "files_dit_comfy_quant", component="wan_dit_file",
        description="ComfyUI comfy_quant t2v file: float8_e4m3fn weights + weight_scale, per-layer comfy_quant JSON, _quantization_metadata header; t=333",
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        extra_files={"wan_t2v_comfy_quant.safetensors": save(state, metadata=metadata)},
        config=dict(path="wan_t2v_comfy_quant.safetensors", **_config("t2v", 16, 16)), seed=seed)


def _case_sharded(seed: int) -> None:
    model, gen = _official("t2v", 16, 16, seed)
    x, context = _t2v_inputs(gen, lat=(16, 3, 2, 4), context_len=9)
    t = torch.tensor([999], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    case_dir = common.write_case(
        "files_dit_sharded_official", component="wan_dit_file",
        description="official sharded release folder: 2 shards + diffusion_pytorch_model.safetensors.index.json + official config.json (no case config); t=999",
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=dict(path="release"), seed=seed)
    folder = case_dir / "release"
    folder.mkdir()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate([names[:half], names[half:]], start=1):
        file = f"diffusion_pytorch_model-0000{i}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    config = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": "t2v", "patch_size": [1, 2, 2],
              "in_dim": 16, "out_dim": 16, "cross_attn_norm": True, **TINY}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _case_lora(seed: int) -> None:
    """Every LoRA key form, merged by the formula W += strength * alpha / rank * up @ down."""
    model, gen = _official("t2v", 16, 16, seed)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    strength = 0.8
    rank = 4
    lora = {}
    params = dict(model.named_parameters())

    def pair(module: str, key_prefix: str, down_name: str, up_name: str, alpha: float | None) -> None:
        w = params[f"{module}.weight"]
        down = 0.3 * torch.randn((rank, *w.shape[1:]), generator=gen)
        up = 0.3 * torch.randn((w.shape[0], rank, *([1] * (w.dim() - 2))), generator=gen)
        lora[f"{key_prefix}.{down_name}.weight"] = down
        lora[f"{key_prefix}.{up_name}.weight"] = up
        if alpha is not None:
            lora[f"{key_prefix}.alpha"] = torch.tensor(alpha)
        scale = strength * (alpha if alpha is not None else rank) / rank
        w.add_(scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape))

    def diff(param: str, key: str) -> None:
        p = params[param]
        d = 0.2 * torch.randn(p.shape, generator=gen)
        lora[key] = d
        p.add_(strength * d)

    pair("blocks.0.self_attn.q", "diffusion_model.blocks.0.self_attn.q", "lora_down", "lora_up", 2.0)
    pair("blocks.1.ffn.0", "diffusion_model.blocks.1.ffn.0", "lora_A", "lora_B", None)
    pair("blocks.0.cross_attn.k", "lora_unet_blocks_0_cross_attn_k", "lora_down", "lora_up", 8.0)
    pair("patch_embedding", "diffusion_model.patch_embedding", "lora_down", "lora_up", 4.0)
    diff("blocks.1.norm3.weight", "diffusion_model.blocks.1.norm3.diff")
    diff("blocks.1.norm3.bias", "diffusion_model.blocks.1.norm3.diff_b")
    diff("head.head.bias", "diffusion_model.head.head.diff_b")
    # LightX2V's modulation delta: `blocks.N.diff_m` for the block's `modulation` parameter.
    diff("blocks.1.modulation", "diffusion_model.blocks.1.diff_m")
    # Keys that match nothing in a Wan2.2 model (a Wan2.1 CLIP branch; a text-encoder LoRA key).
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.zeros((rank, 32))
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] = torch.zeros((32, rank))
    lora["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros((rank, 8))

    x, context = _t2v_inputs(gen, lat=(16, 2, 2, 4), context_len=5)
    t = torch.tensor([640], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    common.write_case(
        "files_dit_lora_merge", component="wan_dit_file",
        description="LoRA merged at load, strength 0.8: lora_down/up+alpha, lora_A/B, lora_unet_ underscored, conv (patch embedding), diff, diff_b and diff_m (modulation); 3 unmatched keys; t=640",
        weights={"wan_t2v.safetensors": base, "lora.safetensors": lora},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=dict(path="wan_t2v.safetensors", lora="lora.safetensors", lora_strength=strength, lora_unmatched=3,
                    **_config("t2v", 16, 16)), seed=seed)


def _case_diffusers_folder(seed: int) -> None:
    """diffusers' own save_pretrained: config.json + small shards + index, under a pipeline root."""
    from cases.dit import _diffusers_model

    gen = common.seed_everything(seed)
    model = _diffusers_model(36, 16, gen)
    lat = (2, 4, 4)
    x = torch.randn((1, 36, *lat), generator=gen)
    context = torch.randn((1, 7, TINY["text_dim"]), generator=gen)
    t = torch.tensor([901.0], dtype=torch.float32)
    out = model(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
    case_dir = common.write_case(
        "files_dit_diffusers_folder", component="wan_dit_file",
        description="diffusers pipeline folder (model_index.json), transformer/ written by save_pretrained in 3 shards with index and diffusers config.json; unpadded context; t=901.0",
        inputs={"x": x, "t": t, "context": context},
        expected={"out": out},
        config=dict(path="pipeline/transformer"), seed=seed)
    root = case_dir / "pipeline"
    model.save_pretrained(root / "transformer", safe_serialization=True, max_shard_size="60KB")
    index = {"_class_name": "WanImageToVideoPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def _case_gguf(seed: int) -> None:
    """A city96-style GGUF DiT: original keys, Q8_0 Linear weights where the input width is a
    multiple of the 32-wide block, F16 for the rest of the matrices, F32 vectors, and the 5-D
    patch embedding stored 2-D with its shape in `comfy.gguf.orig_shape.<name>` (GGUF allows 4-D)."""
    import gguf
    import numpy as np

    model, gen = _official("t2v", 16, 16, seed)
    x, context = _t2v_inputs(gen, lat=(16, 2, 4, 2), context_len=4)
    t = torch.tensor([450], dtype=torch.int64)
    case_dir = common.write_case(
        "files_dit_gguf_q8_0", component="wan_dit_file",
        description="GGUF DiT (city96 layout): Q8_0 / F16 / F32 tensors, 5-D patch embedding with comfy.gguf.orig_shape; reference on the dequantized weights; t=450",
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.zeros(1)},
        config=dict(path="wan_t2v_Q8_0.gguf", **_config("t2v", 16, 16)), seed=seed)
    writer = gguf.GGUFWriter(str(case_dir / "wan_t2v_Q8_0.gguf"), "wan")
    with torch.no_grad():
        for name, p in sorted(model.state_dict().items()):
            data = p.detach().float().numpy()
            if data.ndim == 2 and data.shape[1] % 32 == 0:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                deq = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(data.shape)
            elif data.ndim >= 2:
                if data.ndim > 4:
                    writer.add_array(f"comfy.gguf.orig_shape.{name}", list(data.shape))
                    data = data.reshape(data.shape[0], -1)
                half = data.astype(np.float16)
                writer.add_tensor(name, half)
                deq = half.astype(np.float32).reshape(p.shape)
            else:
                writer.add_tensor(name, data)
                deq = data
            p.copy_(torch.from_numpy(np.ascontiguousarray(deq)).reshape(p.shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    save_file({"out": torch.stack(out).contiguous()}, str(case_dir / "expected.safetensors"))


def _write_gguf(path, state: dict[str, torch.Tensor], encode) -> None:
    """Writes a city96-layout GGUF (architecture `wan`, original keys, 5-D tensors flattened to
    2-D with `comfy.gguf.orig_shape.<name>`). `encode(name, data)` returns (stored array, GGML
    type or None for a plain array, dequantized float32 values)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "wan")
    for name, p in sorted(state.items()):
        data = p.detach().float().numpy()
        if data.ndim > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(data.shape))
            data = data.reshape(data.shape[0], -1)
        stored, qtype, deq = encode(name, data)
        if qtype is None:
            writer.add_tensor(name, stored)
        else:
            writer.add_tensor(name, stored, raw_dtype=qtype)
        p.copy_(torch.from_numpy(np.ascontiguousarray(deq, dtype=np.float32)).reshape(p.shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _plain(data):
    import numpy as np

    if data.ndim >= 2:
        half = data.astype(np.float16)
        return half, None, half.astype(np.float32)
    return data, None, data


def _case_gguf_legacy(seed: int) -> None:
    """Every legacy block type candle runs (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), cycled over the
    matrices whose input width is a whole number of 32-wide blocks, the flattened 5-D patch
    embedding included; once dequantized at use (exact) and once through candle's QMatMul."""
    import gguf

    types = [gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q5_0,
             gguf.GGMLQuantizationType.Q5_1, gguf.GGMLQuantizationType.Q8_0]
    # Widths of two or more 32-wide blocks: candle's Q4_1/Q5_x dot products want pairs of blocks.
    wide = dict(TINY, dim=64, ffn_dim=128, freq_dim=64, text_dim=64)
    wan = load_wan()
    gen = common.seed_everything(seed)
    model = wan.modules.model.WanModel(
        model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16,
        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, **wide).eval()
    _randomize(model, gen)
    x = torch.randn((1, 16, 2, 4, 4), generator=gen)
    context = torch.randn((1, 5, wide["text_dim"]), generator=gen)
    t = torch.tensor([700], dtype=torch.int64)
    cfg = dict(model_type="t2v", in_dim=16, out_dim=16, patch_size=[1, 2, 2], cross_attn_norm=True, **wide)
    counter = iter(range(10_000))

    def encode(name, data):
        if data.ndim == 2 and data.shape[1] % 32 == 0:
            qtype = types[next(counter) % len(types)]
            q = gguf.quants.quantize(data, qtype)
            return q, qtype, gguf.quants.dequantize(q, qtype).reshape(data.shape)
        return _plain(data)

    file = "wan_t2v_mixed.gguf"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        _write_gguf(Path(tmp) / file, model.state_dict(), encode)
        blob = (Path(tmp) / file).read_bytes()
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    common.write_case(
        "files_dit_gguf_legacy_quants", component="wan_dit_file",
        description="GGUF DiT (city96 layout) with Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 matrices (patch embedding quantized too), kept quantized and dequantized at use; reference on the dequantized weights; t=700",
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        extra_files={file: blob},
        config=dict(path=file, **cfg), seed=seed)
    common.write_case(
        "files_dit_gguf_legacy_quants_qmatmul", component="wan_dit_file",
        description="the same GGUF DiT through candle's QMatMul (activations quantized to 8-bit blocks as ggml does); reference on the dequantized weights; t=700",
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        extra_files={file: blob},
        rel_l2=QMATMUL_REL_L2, reason=QMATMUL_REASON,
        config=dict(path=file, quantized_matmul="native", **cfg), seed=seed)


QMATMUL_REL_L2 = 2e-2
QMATMUL_REASON = ("candle's QMatMul quantizes the activations of each quantized layer to Q8_0 / Q8_K blocks "
                  "(ggml's vec_dot) before the integer dot products; the reference multiplies the dequantized "
                  "weights in float32")

# Byte offsets of the float16 scale fields in each K-quant block (gguf-py's block layouts).
K_SCALES = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _random_kquant(data, qtype, rng):
    """Random but valid K-quant blocks for a matrix shaped like `data`, scaled to its spread."""
    import gguf
    import numpy as np

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = data.shape
    blocks = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    fields = K_SCALES[qtype.name]

    def with_scale(scale):
        out = blocks.copy()
        for off in fields:
            out[:, off:off + 2] = np.frombuffer(np.full(len(out), scale, dtype=np.float16).tobytes(), dtype=np.uint8).reshape(-1, 2)
        return out.reshape(rows, -1)

    probe = gguf.quants.dequantize(with_scale(1.0), qtype)
    scale = float(data.std()) / float(probe.std())
    q = with_scale(scale)
    return q, gguf.quants.dequantize(q, qtype).reshape(data.shape)


def _case_gguf_kquants(seed: int) -> None:
    """K-quants need 256-wide blocks: a one-block model of width 256 whose matrices cycle through
    Q2_K…Q6_K with random valid blocks (gguf-py has no K-quant quantizer). The engine's unit
    tests also run this file through candle's QMatMul against this expected output."""
    import gguf
    import numpy as np

    types = [gguf.GGMLQuantizationType.Q2_K, gguf.GGMLQuantizationType.Q3_K, gguf.GGMLQuantizationType.Q4_K,
             gguf.GGMLQuantizationType.Q5_K, gguf.GGMLQuantizationType.Q6_K]
    wide = dict(TINY, dim=256, ffn_dim=256, num_layers=1, num_heads=2)
    wan = load_wan()
    gen = common.seed_everything(seed)
    model = wan.modules.model.WanModel(
        model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16,
        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, **wide).eval()
    _randomize(model, gen)
    rng = np.random.default_rng(seed)
    counter = iter(range(10_000))

    def encode(name, data):
        if data.ndim == 2 and data.shape[1] % 256 == 0:
            qtype = types[next(counter) % len(types)]
            q, deq = _random_kquant(data, qtype, rng)
            return q, qtype, deq
        return _plain(data)

    file = "wan_t2v_kquants.gguf"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        _write_gguf(Path(tmp) / file, model.state_dict(), encode)
        blob = (Path(tmp) / file).read_bytes()
    x = torch.randn((1, 16, 2, 2, 4), generator=gen)
    context = torch.randn((1, 5, wide["text_dim"]), generator=gen)
    t = torch.tensor([880], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    cfg = dict(model_type="t2v", in_dim=16, out_dim=16, patch_size=[1, 2, 2], cross_attn_norm=True, **wide)
    common.write_case(
        "files_dit_gguf_kquants", component="wan_dit_file",
        description="GGUF DiT of width 256 with Q2_K/Q3_K/Q4_K/Q5_K/Q6_K matrices (random valid blocks), kept quantized and dequantized at use; reference on the dequantized weights; t=880",
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        extra_files={file: blob},
        config=dict(path=file, **cfg), seed=seed)


def generate() -> None:
    torch.set_grad_enabled(False)
    _case_scaled_fp8(2001)
    _case_comfy_quant(2002)
    _case_sharded(2003)
    _case_lora(2004)
    _case_diffusers_folder(2005)
    _case_gguf(2006)
    _case_gguf_legacy(2007)
    _case_gguf_kquants(2008)
