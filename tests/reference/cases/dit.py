"""Golden cases for the Wan2.2 diffusion transformer (component `wan_dit`).

Tiny random-weight models of the official `WanModel` (i2v 36 channels, t2v 16, ti2v 48 with
per-token timesteps) and one diffusers `WanTransformer3DModel`, run in float32 on the CPU.

The official forward is called exactly as the official pipelines call it: `x`, `y` and `context`
as lists of per-sample tensors, the context zero-padded to `text_len` inside the forward,
`seq_len` equal to the token count. Weights are saved in the layout users have: the original
Wan keys (one case with ComfyUI's `model.diffusion_model.` prefix), and the diffusers keys for
the diffusers case.

Runner config keys (see tests/golden/README.md, section "wan_dit"): the model's own
`config.json` keys (`model_type`, `in_dim`, `out_dim`, `dim`, `ffn_dim`, `freq_dim`,
`text_dim`, `text_len`, `num_heads`, `num_layers`, `eps`, `cross_attn_norm`, `patch_size`),
plus `time_embedding` ("float64" official, "float32" diffusers) and `pad_context`.
"""

from __future__ import annotations

import math

import torch

import common
from wan_shims import load_wan

TINY = dict(dim=32, ffn_dim=48, freq_dim=32, text_dim=24, text_len=16, num_heads=2, num_layers=2, eps=1e-6)


def _randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Replaces every parameter with seeded values of a realistic scale.

    The official init zeroes the head, which would hide the whole network behind a bias.
    """
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "modulation" in name or "scale_shift_table" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def _official(model_type: str, in_dim: int, out_dim: int, seed: int, norms: bool = True):
    wan = load_wan()
    gen = common.seed_everything(seed)
    model = wan.modules.model.WanModel(
        model_type=model_type, patch_size=(1, 2, 2), in_dim=in_dim, out_dim=out_dim,
        window_size=(-1, -1), qk_norm=norms, cross_attn_norm=norms, **TINY).eval()
    _randomize(model, gen)
    return model, gen


def _config(model_type: str, in_dim: int, out_dim: int, **extra) -> dict:
    cfg = dict(model_type=model_type, in_dim=in_dim, out_dim=out_dim, patch_size=[1, 2, 2], cross_attn_norm=True, **TINY)
    cfg.update(extra)
    return cfg


def _tokens(shape) -> int:
    _, f, h, w = shape
    return f * (h // 2) * (w // 2)


def _case_i2v(name: str, t: torch.Tensor, description: str, seed: int) -> None:
    model, gen = _official("i2v", 36, 16, seed)
    batch = t.shape[0]
    lat = (16, 3, 6, 4)
    if batch > 1:
        # The official forward expands a 1-D t only for batch 1; batches pass [B, seq_len].
        t = t[:, None].expand(batch, _tokens(lat)).contiguous()
    x = torch.randn((batch, *lat), generator=gen)
    y = torch.randn((batch, 20, *lat[1:]), generator=gen)
    context = torch.randn((batch, 7, TINY["text_dim"]), generator=gen)
    with torch.no_grad():
        out = model(list(x), t=t, context=list(context), seq_len=_tokens(lat), y=list(y))
    common.write_case(
        name, component="wan_dit", description=description,
        weights={"model.safetensors": model.state_dict()},
        inputs={"x": x, "y": y, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=_config("i2v", 36, 16), seed=seed)


def _case_t2v_comfy(seed: int) -> None:
    model, gen = _official("t2v", 16, 16, seed)
    lat = (16, 5, 2, 6)
    x = torch.randn((1, *lat), generator=gen)
    context = torch.randn((1, 11, TINY["text_dim"]), generator=gen)
    t = torch.tensor([500], dtype=torch.int64)
    with torch.no_grad():
        out = model(list(x), t=t, context=list(context), seq_len=_tokens(lat))
    state = {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}
    common.write_case(
        "wan_dit_t2v_comfy_prefix", component="wan_dit",
        description="official WanModel t2v (16 ch), latent 5x2x6, t=500 (int64), ComfyUI key prefix",
        weights={"diffusion_model.safetensors": state},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=_config("t2v", 16, 16), seed=seed)


def _case_t2v_no_norms(seed: int) -> None:
    """qk_norm and cross_attn_norm off (both are config switches of WanModel)."""
    model, gen = _official("t2v", 16, 16, seed, norms=False)
    lat = (16, 1, 4, 2)
    x = torch.randn((1, *lat), generator=gen)
    context = torch.randn((1, TINY["text_len"], TINY["text_dim"]), generator=gen)
    t = torch.tensor([1], dtype=torch.int64)
    with torch.no_grad():
        out = model(list(x), t=t, context=list(context), seq_len=_tokens(lat))
    common.write_case(
        "wan_dit_t2v_no_qk_or_cross_norm", component="wan_dit",
        description="official WanModel t2v with qk_norm=False, cross_attn_norm=False, one latent frame 1x4x2, t=1, full-length context",
        weights={"model.safetensors": model.state_dict()},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=_config("t2v", 16, 16, qk_norm=False, cross_attn_norm=False), seed=seed)


def _case_ti2v(seed: int) -> None:
    """Per-token timesteps exactly as wan/textimage2video.py builds them (0 on latent frame 0)."""
    model, gen = _official("ti2v", 48, 48, seed)
    lat = (48, 3, 4, 6)
    x = torch.randn((1, *lat), generator=gen)
    context = torch.randn((1, 9, TINY["text_dim"]), generator=gen)
    seq_len = _tokens(lat)
    mask2 = torch.ones(lat)
    mask2[:, 0] = 0.0
    timestep = torch.stack([torch.tensor(875, dtype=torch.int64)])
    temp_ts = (mask2[0][:, ::2, ::2] * timestep).flatten()
    temp_ts = torch.cat([temp_ts, temp_ts.new_ones(seq_len - temp_ts.size(0)) * timestep])
    t = temp_ts.unsqueeze(0)
    with torch.no_grad():
        out = model(list(x), t=t, context=list(context), seq_len=seq_len)
    common.write_case(
        "wan_dit_ti2v_per_token_t", component="wan_dit",
        description="official WanModel ti2v (48 ch), latent 3x4x6, per-token t (0 on latent frame 0, 875 elsewhere)",
        weights={"model.safetensors": model.state_dict()},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": torch.stack(out)},
        config=_config("ti2v", 48, 48), seed=seed)


def _diffusers_model(in_channels: int, out_channels: int, gen: torch.Generator):
    from diffusers import WanTransformer3DModel

    heads = TINY["num_heads"]
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=TINY["dim"] // heads,
        in_channels=in_channels, out_channels=out_channels, text_dim=TINY["text_dim"],
        freq_dim=TINY["freq_dim"], ffn_dim=TINY["ffn_dim"], num_layers=TINY["num_layers"],
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=TINY["eps"]).eval()
    _randomize(model, gen)
    return model


def _case_diffusers_ti2v(seed: int) -> None:
    """diffusers' expand_timesteps path (WanPipeline for TI2V-5B): t per token, batch 2."""
    gen = common.seed_everything(seed)
    model = _diffusers_model(48, 48, gen)
    lat = (3, 2, 4)
    x = torch.randn((2, 48, *lat), generator=gen)
    # Unpadded: diffusers' transformer uses the context as given (pad_context = false).
    context = torch.randn((2, 5, TINY["text_dim"]), generator=gen)
    mask = torch.ones((1, 1, *lat))
    mask[:, :, 0] = 0.0
    t = torch.tensor(624.0)
    timestep = (mask[0][0][:, ::2, ::2] * t).flatten().unsqueeze(0).expand(2, -1).contiguous()
    with torch.no_grad():
        out = model(hidden_states=x, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]
    common.write_case(
        "wan_dit_diffusers_ti2v_per_token_t", component="wan_dit",
        description="diffusers WanTransformer3DModel (48 ch), batch 2, latent 3x2x4, per-token t [2, 6] (0 on frame 0, 624 elsewhere), unpadded context of 5",
        weights={"diffusion_pytorch_model.safetensors": model.state_dict()},
        inputs={"x": x, "t": timestep, "context": context},
        expected={"out": out},
        config=_config("ti2v", 48, 48, time_embedding="float32", pad_context=False), seed=seed)


def _case_diffusers(seed: int) -> None:
    gen = common.seed_everything(seed)
    model = _diffusers_model(36, 16, gen)
    lat = (3, 6, 4)
    x = torch.randn((1, 36, *lat), generator=gen)
    # diffusers' pipeline pads the prompt embeddings to max_sequence_length with zeros itself.
    context = torch.zeros((1, TINY["text_len"], TINY["text_dim"]))
    context[:, :7] = torch.randn((1, 7, TINY["text_dim"]), generator=gen)
    t = torch.tensor([937.5], dtype=torch.float32)
    with torch.no_grad():
        out = model(hidden_states=x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
    common.write_case(
        "wan_dit_diffusers_layout", component="wan_dit",
        description="diffusers WanTransformer3DModel (36 ch), diffusers key layout, t=937.5 (float32 embedding), context pre-padded",
        weights={"diffusion_pytorch_model.safetensors": model.state_dict()},
        inputs={"x": x, "t": t, "context": context},
        expected={"out": out},
        # No time_embedding / pad_context keys: the runner takes diffusers' numerics from the layout.
        config=_config("i2v", 36, 16), seed=seed)


def generate() -> None:
    torch.set_grad_enabled(False)
    _case_i2v("wan_dit_i2v_int_t", torch.tensor([999, 250], dtype=torch.int64),
              "official WanModel i2v (x 16 + y 20 ch), batch 2, latent 3x6x4, t=[999, 250] (int64, [B, seq_len]), context 7 padded to text_len 16", 1001)
    _case_i2v("wan_dit_i2v_fractional_t", torch.tensor([937.5], dtype=torch.float32),
              "official WanModel i2v, latent 3x6x4, fractional t=937.5 (float32, embedded in float64)", 1002)
    _case_t2v_comfy(1003)
    _case_ti2v(1004)
    _case_diffusers(1005)
    _case_t2v_no_norms(1006)
    _case_diffusers_ti2v(1007)
