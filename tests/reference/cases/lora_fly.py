"""Golden cases for LoRAs applied on the fly (component `wan_dit_file`, `lora_mode`).

The runner loads the base weights untouched (float32, ComfyUI fp8_scaled, GGUF blocks) and
applies each LoRA pair at use; the reference is the official `WanModel` whose weights are the
file's (dequantized) values with the LoRA merged in float32,
`W += strength * alpha / rank * up.flatten(1) @ down.flatten(1)` (and `diff_b` added to the
bias), the same arithmetic as the merge cases of `cases/files.py`. On the fly and merged agree
to float32 summation order.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import common
from cases.dit import TINY, _config, _official, _randomize, _tokens
from cases.files import FP8, PREFIX, _plain, _quantize, _t2v_inputs, _write_gguf
from wan_shims import load_wan


class _Lora:
    """Builds a LoRA file's tensors and merges each pair into the model's parameters."""

    def __init__(self, model: torch.nn.Module, gen: torch.Generator, strength: float, rank: int = 4):
        self.params = dict(model.named_parameters())
        self.gen = gen
        self.strength = strength
        self.rank = rank
        self.tensors: dict[str, torch.Tensor] = {}

    def pair(self, module: str, key_prefix: str, down_name: str, up_name: str, alpha: float | None) -> None:
        w = self.params[f"{module}.weight"]
        down = 0.3 * torch.randn((self.rank, *w.shape[1:]), generator=self.gen)
        up = 0.3 * torch.randn((w.shape[0], self.rank, *([1] * (w.dim() - 2))), generator=self.gen)
        self.tensors[f"{key_prefix}.{down_name}.weight"] = down
        self.tensors[f"{key_prefix}.{up_name}.weight"] = up
        if alpha is not None:
            self.tensors[f"{key_prefix}.alpha"] = torch.tensor(alpha)
        scale = self.strength * (alpha if alpha is not None else self.rank) / self.rank
        with torch.no_grad():
            w.add_(scale * (up.flatten(1) @ down.flatten(1)).reshape(w.shape))

    def diff_b(self, module: str, key: str) -> None:
        p = self.params[f"{module}.bias"]
        d = 0.2 * torch.randn(p.shape, generator=self.gen)
        self.tensors[key] = d
        with torch.no_grad():
            p.add_(self.strength * d)


def _case_plain(seed: int) -> None:
    """float32 weights, every pair on the fly: lora_down/up + alpha, lora_A/B, kohya
    `lora_unet_`, the patch embedding's conv pair; a diff_b merged."""
    model, gen = _official("t2v", 16, 16, seed)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = _Lora(model, gen, strength=0.8)
    lora.pair("blocks.0.self_attn.q", "diffusion_model.blocks.0.self_attn.q", "lora_down", "lora_up", 2.0)
    lora.pair("blocks.1.ffn.0", "diffusion_model.blocks.1.ffn.0", "lora_A", "lora_B", None)
    lora.pair("blocks.0.cross_attn.k", "lora_unet_blocks_0_cross_attn_k", "lora_down", "lora_up", 8.0)
    lora.pair("patch_embedding", "diffusion_model.patch_embedding", "lora_down", "lora_up", 4.0)
    lora.diff_b("head.head", "diffusion_model.head.head.diff_b")
    x, context = _t2v_inputs(gen, lat=(16, 2, 2, 4), context_len=5)
    t = torch.tensor([640], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    common.write_case(
        "files_dit_lora_on_the_fly", component="wan_dit_file",
        description="LoRA applied on the fly (lora_mode on_the_fly), strength 0.8: lora_down/up+alpha, lora_A/B, lora_unet_, conv (patch embedding); diff_b merged; reference merged in float32; t=640",
        weights={"wan_t2v.safetensors": base, "lora.safetensors": lora.tensors},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=dict(path="wan_t2v.safetensors", lora="lora.safetensors", lora_strength=0.8, lora_unmatched=0,
                    lora_mode="on_the_fly", **_config("t2v", 16, 16)), seed=seed)


def _case_fp8(seed: int) -> None:
    """ComfyUI fp8_scaled file, `auto`: float8 layers (not requantized) take their pairs on the
    fly. Reference: the dequantized weights with the LoRA merged."""
    model, gen = _official("t2v", 16, 16, seed)
    state, _ = _quantize(model, "scale_weight")
    state = {PREFIX + k: v for k, v in state.items()}
    state[PREFIX + "scaled_fp8"] = torch.empty(0, dtype=FP8)
    lora = _Lora(model, gen, strength=0.6)
    for block in range(TINY["num_layers"]):
        for module in ("self_attn.q", "self_attn.o", "cross_attn.v", "ffn.0", "ffn.2"):
            name = f"blocks.{block}.{module}"
            lora.pair(name, f"diffusion_model.{name}", "lora_down", "lora_up", 2.0)
    x, context = _t2v_inputs(gen, lat=(16, 2, 2, 4), context_len=5)
    t = torch.tensor([901], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    common.write_case(
        "files_dit_fp8_lora_on_the_fly", component="wan_dit_file",
        description="fp8_scaled t2v file + LoRA (lora_mode auto: float8 layers keep float8 and apply the pairs on the fly); reference: dequantized weights with the LoRA merged in float32; t=901",
        weights={"wan_t2v_fp8_scaled.safetensors": state, "lora.safetensors": lora.tensors},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=dict(path="wan_t2v_fp8_scaled.safetensors", lora="lora.safetensors", lora_strength=0.6,
                    lora_unmatched=0, lora_mode="auto", **_config("t2v", 16, 16)), seed=seed)


def _case_gguf(seed: int) -> None:
    """GGUF file (Q8_0 and Q4_0 blocks), `auto`: quantized layers keep their blocks and take
    their pairs on the fly. Reference: the dequantized weights with the LoRA merged."""
    import gguf

    types = [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0]
    wide = dict(TINY, dim=64, ffn_dim=128, freq_dim=64, text_dim=64)
    wan = load_wan()
    gen = common.seed_everything(seed)
    model = wan.modules.model.WanModel(
        model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16,
        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, **wide).eval()
    _randomize(model, gen)
    counter = iter(range(10_000))

    def encode(name, data):
        if data.ndim == 2 and data.shape[1] % 32 == 0:
            qtype = types[next(counter) % len(types)]
            q = gguf.quants.quantize(data, qtype)
            return q, qtype, gguf.quants.dequantize(q, qtype).reshape(data.shape)
        return _plain(data)

    file = "wan_t2v_q8_q4.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        _write_gguf(Path(tmp) / file, model.state_dict(), encode)
        blob = (Path(tmp) / file).read_bytes()
    lora = _Lora(model, gen, strength=0.7)
    lora.pair("blocks.0.self_attn.q", "diffusion_model.blocks.0.self_attn.q", "lora_down", "lora_up", None)
    lora.pair("blocks.1.cross_attn.o", "diffusion_model.blocks.1.cross_attn.o", "lora_A", "lora_B", None)
    lora.pair("blocks.1.ffn.2", "lora_unet_blocks_1_ffn_2", "lora_down", "lora_up", 2.0)
    lora.pair("patch_embedding", "diffusion_model.patch_embedding", "lora_down", "lora_up", 4.0)
    lora.diff_b("head.head", "diffusion_model.head.head.diff_b")
    x = torch.randn((1, 16, 2, 4, 4), generator=gen)
    context = torch.randn((1, 5, wide["text_dim"]), generator=gen)
    t = torch.tensor([760], dtype=torch.int64)
    out = model(list(x), t=t, context=list(context), seq_len=_tokens(x.shape[1:]))
    cfg = dict(model_type="t2v", in_dim=16, out_dim=16, patch_size=[1, 2, 2], cross_attn_norm=True, **wide)
    common.write_case(
        "files_dit_gguf_lora_on_the_fly", component="wan_dit_file",
        description="GGUF DiT (Q8_0/Q4_0, patch embedding quantized too) + LoRA (lora_mode auto: quantized layers keep their blocks, pairs on the fly; diff_b merged); reference: dequantized weights with the LoRA merged in float32; t=760",
        weights={"lora.safetensors": lora.tensors},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        extra_files={file: blob},
        config=dict(path=file, lora="lora.safetensors", lora_strength=0.7, lora_unmatched=0, lora_mode="auto",
                    **cfg), seed=seed)


def generate() -> None:
    torch.set_grad_enabled(False)
    _case_plain(2101)
    _case_fp8(2102)
    _case_gguf(2103)
