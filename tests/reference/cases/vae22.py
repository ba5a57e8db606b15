"""Golden case for the Wan2.2 VAE (engine/src/wan_vae/, `Config::wan22`).

A tiny random-weight official `WanVAE_` of wan/modules/vae2_2.py (48 latent channels, patchify
2×2, residual down/up blocks with the AvgDown3D/DupUp3D shortcuts, decoder base dim apart from
the encoder's), normalised with the `Wan2_2_VAE` statistics. Outputs as in `vae.py`: `latent` (9 frames,
chunks 1, 4, 4), `latent_short` (5 frames), `decoded` (3 latent frames → 9
frames, clamped like `Wan2_2_VAE.decode`).
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


def generate() -> None:
    wan = load_wan()
    seed = 51
    dim, dec_dim, num_res_blocks = 2, 3, 1
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
        config={"version": "2.2", "layout": "original", "base_dim": dim, "decoder_base_dim": dec_dim,
                "z_dim": 48, "dim_mult": DIM_MULT, "num_res_blocks": num_res_blocks,
                "temporal_downsample": TEMPORAL_DOWNSAMPLE, "patch_size": 2, "residual_shortcuts": True,
                "latents_mean": mean, "latents_std": std},
        seed=seed,
    )
