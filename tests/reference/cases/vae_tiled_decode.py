"""Golden cases for tiled decoding with the Wan VAEs (engine/src/wan_vae/tiled_decode.rs).

diffusers' `AutoencoderKLWan` with `enable_tiling(...)` at tiny sizes (tiles of a few latent
pixels, so that several seams and cut-short edge tiles cross each frame; 2 latent frames, so each
tile's causal cache carries from the first frame to the next), on tiny random-weight Wan2.1 and
Wan2.2 VAEs built as in `vae.py` / `vae22.py` (attention output projections randomised, so each
tile's attention sees only its tile). The official Wan code has no tiling: diffusers is the
reference here.

Outputs: `decoded_tiled` (decode of the normalised latents `z`, tiled, clamped). The config's
`decode_tiling` = [tile_height, tile_width, stride_height, stride_width] in output pixels, as
diffusers' `enable_tiling` takes them.
"""

from __future__ import annotations

import torch

import common
from cases import vae as vae21
from cases import vae22
from wan_shims import load_wan


def _decode(model, z, mean, std):
    n = len(mean)
    m = torch.tensor(mean).view(1, n, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(std).view(1, n, 1, 1, 1)
    with torch.no_grad():
        return model.decode(z[None] / inv_std + m).sample[0]


def _report(name, model, z, mean, std, tiling):
    untiled = _decode(model, z, mean, std)
    model.enable_tiling(*tiling)
    tiled = _decode(model, z, mean, std)
    model.disable_tiling()
    err = ((tiled - untiled).norm() / untiled.norm()).item()
    print(f"{name}: tiled vs untiled decode (random weights, attention per tile): rel L2 {err:.3g}")
    return tiled


def _wan21_case() -> None:
    from diffusers import AutoencoderKLWan

    seed, dim, num_res_blocks = 71, 2, 1
    official = vae21._official(dim, num_res_blocks, seed)
    state = vae21._to_diffusers(official.state_dict(), num_res_blocks)
    model = AutoencoderKLWan(base_dim=dim, z_dim=16, dim_mult=vae21.DIM_MULT, num_res_blocks=num_res_blocks,
                             attn_scales=[], temperal_downsample=vae21.TEMPORAL_DOWNSAMPLE, dropout=0.0,
                             latents_mean=vae21.MEAN, latents_std=vae21.STD).eval()
    model.load_state_dict(state, strict=True)
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    z = torch.randn(16, 2, 6, 8, generator=gen)
    # Latent tiles 4x5 every 2x3: 3x3 tiles, the last row and column cut short.
    tiling = [32, 40, 16, 24]
    tiled = _report("vae21", model, z, vae21.MEAN, vae21.STD, tiling)
    config = vae21._config(dim, num_res_blocks, "diffusers")
    del config["num_frames"]
    config["decode_tiling"] = tiling
    common.write_case(
        "vae21_diffusers_tiled_decode",
        component="wan_vae",
        description="Wan2.1 VAE, diffusers AutoencoderKLWan tiled decode (enable_tiling 32x40 tiles, "
                    "stride 16x24; 2 latent frames of 6x8: 3x3 tiles, cut-short edge tiles)",
        weights={"diffusion_pytorch_model.safetensors": state},
        inputs={"z": z},
        expected={"decoded_tiled": tiled},
        config=config,
        seed=seed,
    )


def _wan22_case() -> None:
    from diffusers import AutoencoderKLWan

    wan = load_wan()
    mean, std = vae22._stats(wan)
    seed, dim, dec_dim, num_res_blocks = 72, 2, 2, 1
    official = vae22._official(wan, dim, dec_dim, num_res_blocks, seed)
    state = vae22._to_diffusers(official.state_dict(), num_res_blocks)
    model = AutoencoderKLWan(base_dim=dim, decoder_base_dim=dec_dim, z_dim=48, dim_mult=vae22.DIM_MULT,
                             num_res_blocks=num_res_blocks, attn_scales=[],
                             temperal_downsample=vae22.TEMPORAL_DOWNSAMPLE, latents_mean=mean, latents_std=std,
                             is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                             scale_factor_spatial=16).eval()
    model.load_state_dict(state, strict=True)
    gen = torch.Generator("cpu").manual_seed(seed + 1)
    z = torch.randn(48, 2, 3, 5, generator=gen)
    # Latent tiles 3x4 every 2x2 (2x3 tiles). Blend and crop are in the decoder's patchified
    # output: 16 and 20 of its pixels; the width's stride (40) is not a whole latent (32), so
    # diffusers keeps more columns per tile than the tiles advance, as this case pins.
    tiling = [48, 64, 32, 40]
    tiled = _report("vae22", model, z, mean, std, tiling)
    config = vae22._config(dim, dec_dim, num_res_blocks, "diffusers", mean, std)
    config["decode_tiling"] = tiling
    common.write_case(
        "vae22_diffusers_tiled_decode",
        component="wan_vae",
        description="Wan2.2 VAE, diffusers AutoencoderKLWan is_residual tiled decode (enable_tiling 48x64 "
                    "tiles, stride 32x40; 2 latent frames of 3x5: 2x3 tiles, blended on the patchified output)",
        weights={"diffusion_pytorch_model.safetensors": state},
        inputs={"z": z},
        expected={"decoded_tiled": tiled},
        config=config,
        seed=seed,
    )


def generate() -> None:
    _wan21_case()
    _wan22_case()
