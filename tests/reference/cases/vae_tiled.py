"""Golden cases for tiled encoding with the Wan VAEs (engine/src/wan_vae/tiled_encode.rs).

diffusers' `AutoencoderKLWan` with `enable_tiling(...)` at tiny sizes (tiles of a few latent
pixels, so that several seams and a cut-short edge tile cross each frame), on tiny random-weight
Wan2.1 and Wan2.2 VAEs built as in `vae.py` / `vae22.py`. The official Wan code has no tiling:
diffusers is the reference here.

Outputs: `latent_tiled` (normalised posterior mean of `video`, tiled encode). The config's
`encode_tiling` = [tile_height, tile_width, stride_height, stride_width] in the encoder's input
pixels (patchified pixels for Wan2.2), as diffusers' `enable_tiling` takes them.
"""

from __future__ import annotations

import torch

import common
from cases import vae as vae21
from cases import vae22
from wan_shims import load_wan


def _normalised(model, video, mean, std):
    z = len(mean)
    m = torch.tensor(mean).view(1, z, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(std).view(1, z, 1, 1, 1)
    with torch.no_grad():
        return ((model.encode(video[None]).latent_dist.mode() - m) * inv_std)[0]


def _wan21_case() -> None:
    from diffusers import AutoencoderKLWan

    seed, dim, num_res_blocks = 61, 2, 1
    official = vae21._official(dim, num_res_blocks, seed)
    state = vae21._to_diffusers(official.state_dict(), num_res_blocks)
    model = AutoencoderKLWan(base_dim=dim, z_dim=16, dim_mult=vae21.DIM_MULT, num_res_blocks=num_res_blocks,
                             attn_scales=[], temperal_downsample=vae21.TEMPORAL_DOWNSAMPLE, dropout=0.0,
                             latents_mean=vae21.MEAN, latents_std=vae21.STD).eval()
    model.load_state_dict(state, strict=True)
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    video = torch.rand(3, 5, 64, 88, generator=gen) * 2 - 1
    tiling = [48, 40, 32, 24]
    untiled = _normalised(model, video, vae21.MEAN, vae21.STD)
    model.enable_tiling(*tiling)
    tiled = _normalised(model, video, vae21.MEAN, vae21.STD)
    err = ((tiled - untiled).norm() / untiled.norm()).item()
    print(f"vae21 tiled vs untiled encode (random weights): rel L2 {err:.3g}")
    config = vae21._config(dim, num_res_blocks, "diffusers")
    del config["num_frames"]
    config["encode_tiling"] = tiling
    common.write_case(
        "vae21_diffusers_tiled_encode",
        component="wan_vae",
        description="Wan2.1 VAE, diffusers AutoencoderKLWan tiled encode (enable_tiling 48x40 tiles, "
                    "stride 32x24, 5 frames of 64x88: 2x4 tiles, cut-short edge tiles)",
        weights={"diffusion_pytorch_model.safetensors": state},
        inputs={"video": video},
        expected={"latent_tiled": tiled},
        config=config,
        seed=seed,
    )


def _wan22_case() -> None:
    from diffusers import AutoencoderKLWan

    wan = load_wan()
    mean, std = vae22._stats(wan)
    seed, dim, dec_dim, num_res_blocks = 62, 2, 2, 1
    official = vae22._official(wan, dim, dec_dim, num_res_blocks, seed)
    state = vae22._to_diffusers(official.state_dict(), num_res_blocks)
    model = AutoencoderKLWan(base_dim=dim, decoder_base_dim=dec_dim, z_dim=48, dim_mult=vae22.DIM_MULT,
                             num_res_blocks=num_res_blocks, attn_scales=[],
                             temperal_downsample=vae22.TEMPORAL_DOWNSAMPLE, latents_mean=mean, latents_std=std,
                             is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                             scale_factor_spatial=16).eval()
    model.load_state_dict(state, strict=True)
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    video = torch.rand(3, 5, 64, 96, generator=gen) * 2 - 1
    tiling = [32, 32, 16, 16]
    model.enable_tiling(*tiling)
    tiled = _normalised(model, video, mean, std)
    config = vae22._config(dim, dec_dim, num_res_blocks, "diffusers", mean, std)
    config["encode_tiling"] = tiling
    common.write_case(
        "vae22_diffusers_tiled_encode",
        component="wan_vae",
        description="Wan2.2 VAE, diffusers AutoencoderKLWan is_residual tiled encode (enable_tiling 32 "
                    "patchified pixels, stride 16; 5 frames of 64x96 pixels: 2x3 tiles)",
        weights={"diffusion_pytorch_model.safetensors": state},
        inputs={"video": video},
        expected={"latent_tiled": tiled},
        config=config,
        seed=seed,
    )


def generate() -> None:
    _wan21_case()
    _wan22_case()
