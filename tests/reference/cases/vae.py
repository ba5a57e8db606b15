"""Golden cases for the Wan2.1 VAE (engine/src/wan_vae/).

Tiny random-weight configs of the official `WanVAE_` (wan/modules/vae2_1.py) and diffusers'
`AutoencoderKLWan` with the same architecture. Every norm gain and the attention output
projection (zero-initialised by the reference) are randomised so that each weight matters.

Outputs per case:
- `latent`:        mean of the posterior, normalised with the Wan2.1 latent mean/std, of a
                   17-frame clip (chunks 1, 4, 4, 4, 4 with the feature cache).
- `latent_short`:  the same for a 5-frame clip (two chunks).
- `decoded`:       the decode of a 5-frame latent (17 frames, one latent frame per chunk),
                   clamped to [-1, 1] as `Wan2_1_VAE.decode` and diffusers do.
- `y`:             the I2V conditioning of wan/image2video.py: mask (4 channels) ++ latent of the
                   clip [image, 16 zero frames].
"""

from __future__ import annotations

import torch

import common
from wan_shims import load_wan

MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
       3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
DIM_MULT = [1, 2, 4, 4]
TEMPORAL_DOWNSAMPLE = [False, True, True]
FRAMES, HEIGHT, WIDTH = 17, 16, 24


def _official(dim: int, num_res_blocks: int, seed: int):
    wan = load_wan()
    torch.manual_seed(seed)
    model = wan.modules.vae2_1.WanVAE_(
        dim=dim, z_dim=16, dim_mult=DIM_MULT, num_res_blocks=num_res_blocks, attn_scales=[],
        temperal_downsample=TEMPORAL_DOWNSAMPLE, dropout=0.0).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif name.endswith("proj.weight"):
                param.copy_(0.3 * torch.randn_like(param))
    return model


def _scale():
    mean = torch.tensor(MEAN, dtype=torch.float32)
    std = torch.tensor(STD, dtype=torch.float32)
    return [mean, 1.0 / std]


def _mask(frames: int, lat_h: int, lat_w: int) -> torch.Tensor:
    # Exactly as wan/image2video.py builds it.
    msk = torch.ones(1, frames, lat_h, lat_w)
    msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)[0]


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator("cpu").manual_seed(seed)
    video = torch.rand(3, FRAMES, HEIGHT, WIDTH, generator=gen) * 2 - 1
    z = torch.randn(16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, generator=gen)
    image = torch.rand(3, HEIGHT, WIDTH, generator=gen) * 2 - 1
    return {"video": video, "z": z, "image": image}


def _official_outputs(model, inputs) -> dict[str, torch.Tensor]:
    scale = _scale()
    with torch.no_grad():
        latent = model.encode(inputs["video"][None], scale)[0]
        latent_short = model.encode(inputs["video"][None, :, :5], scale)[0]
        decoded_raw = model.decode(inputs["z"][None], scale)[0]
        clip = torch.concat([inputs["image"][:, None], torch.zeros(3, FRAMES - 1, HEIGHT, WIDTH)], dim=1)
        cond = model.encode(clip[None], scale)[0]
    y = torch.concat([_mask(FRAMES, HEIGHT // 8, WIDTH // 8), cond])
    return {"latent": latent, "latent_short": latent_short, "decoded_raw": decoded_raw,
            "decoded": decoded_raw.clamp(-1, 1), "y": y}


def _config(dim: int, num_res_blocks: int, layout: str) -> dict:
    return {"layout": layout, "base_dim": dim, "z_dim": 16, "dim_mult": DIM_MULT,
            "num_res_blocks": num_res_blocks, "temporal_downsample": TEMPORAL_DOWNSAMPLE,
            "num_frames": FRAMES}


def _to_diffusers(state: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """The original -> diffusers key map for the Wan2.1 VAE (diffusers' own converter agrees)."""
    out = {}
    per_block = num_res_blocks + 1
    for key, value in state.items():
        k = key
        for a, b in [(".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
                     (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut."),
                     (".middle.0.", ".mid_block.resnets.0."), (".middle.1.", ".mid_block.attentions.0."),
                     (".middle.2.", ".mid_block.resnets.1."), (".head.0.", ".norm_out."),
                     (".head.2.", ".conv_out."), ("encoder.conv1.", "encoder.conv_in."),
                     ("decoder.conv1.", "decoder.conv_in."), ("encoder.downsamples.", "encoder.down_blocks.")]:
            k = k.replace(a, b)
        if k.startswith("conv1."):
            k = "quant_conv." + k[len("conv1."):]
        elif k.startswith("conv2."):
            k = "post_quant_conv." + k[len("conv2."):]
        if k.startswith("decoder.upsamples."):
            rest = k[len("decoder.upsamples."):]
            flat, tail = rest.split(".", 1)
            block, j = divmod(int(flat), per_block + 1)
            if j < per_block:
                k = f"decoder.up_blocks.{block}.resnets.{j}.{tail}"
            else:
                k = f"decoder.up_blocks.{block}.upsamplers.0.{tail}"
        out[k] = value
    return out


def _official_case(dim: int, num_res_blocks: int, seed: int) -> None:
    model = _official(dim, num_res_blocks, seed)
    inputs = _inputs(seed + 1)
    expected = _official_outputs(model, inputs)
    del expected["decoded_raw"]  # the clamp touches under 1 % of it: `decoded` covers it
    common.write_case(
        "vae21_official",
        component="wan_vae",
        description="Wan2.1 VAE, official WanVAE_ (tiny, random weights, original key layout): "
                    "chunked encode of 17 and 5 frames, per-latent-frame decode, I2V conditioning",
        weights={"wan_2.1_vae.safetensors": model.state_dict()},
        inputs=inputs,
        expected=expected,
        config=_config(dim, num_res_blocks, "original"),
        seed=seed,
    )


def _diffusers_case(dim: int, num_res_blocks: int, seed: int) -> None:
    from diffusers import AutoencoderKLWan

    official = _official(dim, num_res_blocks, seed)
    state = _to_diffusers(official.state_dict(), num_res_blocks)
    model = AutoencoderKLWan(base_dim=dim, z_dim=16, dim_mult=DIM_MULT, num_res_blocks=num_res_blocks,
                             attn_scales=[], temperal_downsample=TEMPORAL_DOWNSAMPLE, dropout=0.0,
                             latents_mean=MEAN, latents_std=STD).eval()
    missing, unexpected = model.load_state_dict(state, strict=True), None
    del missing, unexpected
    inputs = _inputs(seed + 1)
    mean = torch.tensor(MEAN).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(STD).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        # As the diffusers Wan I2V pipeline normalises: (mean - latents_mean) * (1 / latents_std).
        def enc(x):
            return ((model.encode(x[None]).latent_dist.mode() - mean) * inv_std)[0]
        latent = enc(inputs["video"])
        latent_short = enc(inputs["video"][:, :5])
        decoded = model.decode(inputs["z"][None] / inv_std + mean).sample[0]
        clip = torch.concat([inputs["image"][:, None], torch.zeros(3, FRAMES - 1, HEIGHT, WIDTH)], dim=1)
        y = torch.concat([_mask(FRAMES, HEIGHT // 8, WIDTH // 8), enc(clip)])
    expected = {"latent": latent, "latent_short": latent_short, "decoded": decoded, "y": y}
    reference = _official_outputs(official, inputs)
    for name, value in expected.items():
        err = ((value - reference[name]).norm() / reference[name].norm()).item()
        assert err < 1e-5, f"diffusers and official disagree on {name}: rel L2 {err}"
    common.write_case(
        "vae21_diffusers",
        component="wan_vae",
        description="Wan2.1 VAE, diffusers AutoencoderKLWan (tiny, random weights, diffusers key layout): "
                    "chunked encode of 17 and 5 frames, per-latent-frame decode, I2V conditioning",
        weights={"diffusion_pytorch_model.safetensors": state},
        inputs=inputs,
        expected=expected,
        config=_config(dim, num_res_blocks, "diffusers"),
        seed=seed,
    )


def generate() -> None:
    _official_case(dim=4, num_res_blocks=2, seed=41)
    _diffusers_case(dim=2, num_res_blocks=2, seed=42)
    _pth_case(dim=2, num_res_blocks=1, seed=43)


def _pth_case(dim: int, num_res_blocks: int, seed: int) -> None:
    """The official `Wan2.1_VAE.pth` form: a `torch.save`d state dict (zip pickle)."""
    import io

    model = _official(dim, num_res_blocks, seed)
    full_inputs = _inputs(seed + 1)
    # Short clips keep the case small: 5 frames encode in two chunks, 2 latent frames decode to 5.
    inputs = {"video": full_inputs["video"][:, :5], "z": full_inputs["z"][:, :2]}
    scale = _scale()
    with torch.no_grad():
        full = {"latent_short": model.encode(inputs["video"][None], scale)[0],
                "decoded": model.decode(inputs["z"][None], scale)[0].clamp(-1, 1)}
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, buffer)
    case_dir = common.write_case(
        "vae21_official_pth",
        component="wan_vae",
        description="Wan2.1 VAE, official WanVAE_ (tiny, random weights) loaded from a torch.save'd .pth "
                    "state dict: chunked encode, decode",
        weights={},
        extra_files={"Wan2.1_VAE.pth": buffer.getvalue()},
        inputs=inputs,
        expected={k: full[k] for k in ("latent_short", "decoded")},
        config=_config(dim, num_res_blocks, "original"),
        seed=seed,
    )
    # write_case lists only the safetensors it writes; name the .pth as the case's weights.
    manifest = case_dir / "case.toml"
    text = manifest.read_text(encoding="utf-8").replace('weights = []', 'weights = ["Wan2.1_VAE.pth"]', 1)
    manifest.write_text(text, encoding="utf-8")
