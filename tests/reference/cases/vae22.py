"""Golden case for the Wan2.2 VAE (engine/src/wan_vae/, `Config::wan22`).

A tiny random-weight official `WanVAE_` of wan/modules/vae2_2.py (48 latent channels, patchify
2×2, residual down/up blocks with the AvgDown3D/DupUp3D shortcuts, decoder base dim apart from
the encoder's), normalised with the `Wan2_2_VAE` statistics. Outputs as in `vae.py`: `latent` (9 frames,
chunks 1, 4, 4), `latent_short` (5 frames), `decoded` (3 latent frames → 9
frames, clamped like `Wan2_2_VAE.decode`). `vae22_official_pth`: the official `Wan2.2_VAE.pth` form
(a `torch.save`d state dict) over a 17-frame clip (encode chunks 1, 4, 4, 4, 4; 5 latent frames
decode to 17).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

import common
from wan_shims import load_wan

DIM_MULT = [1, 2, 4, 4]
TEMPORAL_DOWNSAMPLE = [False, True, True]
FRAMES, HEIGHT, WIDTH = 9, 32, 32


def _stats(wan) -> tuple[list[float], list[float]]:
    """The mean and std lists hard-coded in `Wan2_2_VAE.__init__`."""
    source = Path(wan.modules.vae2_2.__file__).read_text(encoding="utf-8")
    body = source[source.index("class Wan2_2_VAE"):]
    lists = re.findall(r"torch\.tensor\(\s*\[([^\]]*)\]", body)[:2]
    mean, std = ([float(v) for v in text.replace("\n", " ").split(",") if v.strip()] for text in lists)
    return mean, std


def _official(wan, dim: int, dec_dim: int, num_res_blocks: int, seed: int):
    torch.manual_seed(seed)
    model = wan.modules.vae2_2.WanVAE_(
        dim=dim, dec_dim=dec_dim, z_dim=48, dim_mult=DIM_MULT, num_res_blocks=num_res_blocks,
        attn_scales=[], temperal_downsample=TEMPORAL_DOWNSAMPLE, dropout=0.0).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif name.endswith("proj.weight"):
                param.copy_(0.3 * torch.randn_like(param))
    return model


def _to_diffusers(state: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """Original -> diffusers keys of the Wan2.2 VAE (diffusers' `is_residual` blocks)."""
    out = {}
    for key, value in state.items():
        k = key
        for prefix, new, resnets, resample in [("encoder.downsamples.", "encoder.down_blocks.", num_res_blocks, "downsampler"),
                                               ("decoder.upsamples.", "decoder.up_blocks.", num_res_blocks + 1, "upsampler")]:
            if k.startswith(prefix):
                block, _, j, tail = k[len(prefix):].split(".", 3)
                inner = f"resnets.{j}.{tail}" if int(j) < resnets else f"{resample}.{tail}"
                k = f"{new}{block}.{inner}"
        for a, b in [(".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
                     (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut."),
                     (".middle.0.", ".mid_block.resnets.0."), (".middle.1.", ".mid_block.attentions.0."),
                     (".middle.2.", ".mid_block.resnets.1."), (".head.0.", ".norm_out."),
                     (".head.2.", ".conv_out."), ("encoder.conv1.", "encoder.conv_in."),
                     ("decoder.conv1.", "decoder.conv_in.")]:
            k = k.replace(a, b)
        if k.startswith("conv1."):
            k = "quant_conv." + k[len("conv1."):]
        elif k.startswith("conv2."):
            k = "post_quant_conv." + k[len("conv2."):]
        out[k] = value
    return out


def _config(dim, dec_dim, num_res_blocks, layout, mean, std) -> dict:
    return {"version": "2.2", "layout": layout, "base_dim": dim, "decoder_base_dim": dec_dim,
            "z_dim": 48, "dim_mult": DIM_MULT, "num_res_blocks": num_res_blocks,
            "temporal_downsample": TEMPORAL_DOWNSAMPLE, "patch_size": 2, "residual_shortcuts": True,
            "latents_mean": mean, "latents_std": std}


def _diffusers_case(wan, mean, std) -> None:
    from diffusers import AutoencoderKLWan

    seed, dim, dec_dim, num_res_blocks = 52, 2, 2, 1
    official = _official(wan, dim, dec_dim, num_res_blocks, seed)
    state = _to_diffusers(official.state_dict(), num_res_blocks)
    model = AutoencoderKLWan(base_dim=dim, decoder_base_dim=dec_dim, z_dim=48, dim_mult=DIM_MULT,
                             num_res_blocks=num_res_blocks, attn_scales=[], temperal_downsample=TEMPORAL_DOWNSAMPLE,
                             latents_mean=mean, latents_std=std, is_residual=True, in_channels=12, out_channels=12,
                             patch_size=2, scale_factor_spatial=16).eval()
    model.load_state_dict(state, strict=True)
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    video = torch.rand(3, 5, 32, 32, generator=gen) * 2 - 1
    z = torch.randn(48, 2, 2, 2, generator=gen)
    m = torch.tensor(mean).view(1, 48, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(std).view(1, 48, 1, 1, 1)
    scale = [torch.tensor(mean), 1.0 / torch.tensor(std)]
    with torch.no_grad():
        latent = ((model.encode(video[None]).latent_dist.mode() - m) * inv_std)[0]
        decoded = model.decode(z[None] / inv_std + m).sample[0]
        ref_latent = official.encode(video[None], scale)[0]
        ref_decoded = official.decode(z[None], scale)[0].clamp(-1, 1)
    for name, a, b in [("latent", latent, ref_latent), ("decoded", decoded, ref_decoded)]:
        err = ((a - b).norm() / b.norm()).item()
        assert err < 1e-5, f"diffusers and official Wan2.2 VAE disagree on {name}: rel L2 {err}"
    common.write_case(
        "vae22_diffusers",
        component="wan_vae",
        description="Wan2.2 VAE, diffusers AutoencoderKLWan is_residual (tiny, random weights, diffusers key layout): "
                    "chunked encode of 5 frames, per-latent-frame decode",
        weights={"diffusion_pytorch_model.safetensors": state},
        inputs={"video": video, "z": z},
        expected={"latent": latent, "decoded": decoded},
        config=_config(dim, dec_dim, num_res_blocks, "diffusers", mean, std),
        seed=seed,
    )


def generate() -> None:
    wan = load_wan()
    seed = 51
    dim, dec_dim, num_res_blocks = 2, 3, 1
    model = _official(wan, dim, dec_dim, num_res_blocks, seed)
    mean, std = _stats(wan)
    scale = [torch.tensor(mean), 1.0 / torch.tensor(std)]
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    video = torch.rand(3, FRAMES, HEIGHT, WIDTH, generator=gen) * 2 - 1
    z = torch.randn(48, 3, HEIGHT // 16, WIDTH // 16, generator=gen)
    with torch.no_grad():
        latent = model.encode(video[None], scale)[0]
        latent_short = model.encode(video[None, :, :5], scale)[0]
        decoded_raw = model.decode(z[None], scale)[0]
    common.write_case(
        "vae22_official",
        component="wan_vae",
        description="Wan2.2 VAE, official WanVAE_ of vae2_2.py (tiny, random weights, original key layout): "
                    "chunked encode of 9 and 5 frames, per-latent-frame decode",
        weights={"wan2.2_vae.safetensors": model.state_dict()},
        inputs={"video": video, "z": z},
        expected={"latent": latent, "latent_short": latent_short, "decoded": decoded_raw.clamp(-1, 1)},
        config=_config(dim, dec_dim, num_res_blocks, "original", mean, std),
        seed=seed,
    )
    _diffusers_case(wan, mean, std)
    _pth_case(wan, mean, std)


def _pth_case(wan, mean, std) -> None:
    """The official `Wan2.2_VAE.pth` form (`torch.save`d state dict, zip pickle), 17 frames."""
    import io

    seed, dim, dec_dim, num_res_blocks = 53, 2, 2, 1
    model = _official(wan, dim, dec_dim, num_res_blocks, seed)
    scale = [torch.tensor(mean), 1.0 / torch.tensor(std)]
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    # 16×16 pixels (one latent pixel) keeps the 17-frame case small.
    video = torch.rand(3, 17, 16, 16, generator=gen) * 2 - 1
    z = torch.randn(48, 5, 1, 1, generator=gen)
    with torch.no_grad():
        latent = model.encode(video[None], scale)[0]
        decoded = model.decode(z[None], scale)[0].clamp(-1, 1)
    assert latent.shape[1] == 5 and decoded.shape[1] == 17, (latent.shape, decoded.shape)
    buffer = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, buffer)
    case_dir = common.write_case(
        "vae22_official_pth",
        component="wan_vae",
        description="Wan2.2 VAE, official WanVAE_ of vae2_2.py (tiny, random weights) loaded from a torch.save'd "
                    ".pth state dict: chunked encode of 17 frames, per-latent-frame decode of 5 latent frames",
        weights={},
        extra_files={"Wan2.2_VAE.pth": buffer.getvalue()},
        inputs={"video": video, "z": z},
        expected={"latent": latent, "decoded": decoded},
        config=_config(dim, dec_dim, num_res_blocks, "original", mean, std),
        seed=seed,
    )
    # write_case lists only the safetensors it writes; name the .pth as the case's weights.
    manifest = case_dir / "case.toml"
    text = manifest.read_text(encoding="utf-8").replace('weights = []', 'weights = ["Wan2.2_VAE.pth"]', 1)
    manifest.write_text(text, encoding="utf-8")
