"""Golden cases for fitting the source image to the model's resolution.

`wan`: the official Wan2.2 image-to-video preprocessing (wan/image2video.py, `generate`):
`TF.to_tensor(img).sub_(0.5).div_(0.5)`, the output size from `max_area` (aspect kept, sides
multiples of vae_stride × patch_size = 16), then `F.interpolate(mode="bicubic")` on the
[-1, 1] tensor (align_corners=False, no antialias, no clamp). The size formula is the one in
that file, evaluated on float64 like numpy does.

`comfy`: ComfyUI's WanImageToVideo node resizes with `common_upscale(image, W, H, "bilinear",
"center")`: a centre crop to the target aspect (offsets rounded with Python's round), then
`F.interpolate(mode="bilinear")`. ComfyUI is not a pinned package, so the crop is written out
here from its documented behaviour; the resize is torch's.

`wan_sizes`: the size formula alone at the real 480p and 720p areas for many aspect ratios.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

import common

VAE_STRIDE = (4, 8, 8)
PATCH_SIZE = (1, 2, 2)


def wan_size(h: int, w: int, max_area: int) -> tuple[int, int]:
    # Same expression as wan/image2video.py (`generate`), kept verbatim in form.
    aspect_ratio = h / w
    lat_h = round(np.sqrt(max_area * aspect_ratio) // VAE_STRIDE[1] // PATCH_SIZE[1] * PATCH_SIZE[1])
    lat_w = round(np.sqrt(max_area / aspect_ratio) // VAE_STRIDE[2] // PATCH_SIZE[2] * PATCH_SIZE[2])
    return lat_h * VAE_STRIDE[1], lat_w * VAE_STRIDE[2]


def random_image(gen: torch.Generator, h: int, w: int) -> np.ndarray:
    # Smooth gradients plus noise: bicubic overshoot and edges both show up.
    base = torch.rand(3, max(h // 4, 1), max(w // 4, 1), generator=gen)
    smooth = F.interpolate(base[None], size=(h, w), mode="bilinear")[0]
    noise = torch.rand(3, h, w, generator=gen) * 0.3
    pixels = ((smooth * 0.8 + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).numpy()


def wan_case(name: str, h: int, w: int, max_area: int, seed: int) -> None:
    gen = common.seed_everything(seed)
    pixels = random_image(gen, h, w)
    img = TF.to_tensor(Image.fromarray(pixels, "RGB")).sub_(0.5).div_(0.5)
    out_h, out_w = wan_size(h, w, max_area)
    fitted = F.interpolate(img[None].cpu(), size=(out_h, out_w), mode="bicubic")[0]
    common.write_case(
        name,
        component="image_fit",
        description=f"official Wan fit of a {w}x{h} image to max_area {max_area} -> {out_w}x{out_h}",
        inputs={"image": torch.from_numpy(pixels.copy()).float()},
        expected={"fitted": fitted, "size": torch.tensor([out_h, out_w], dtype=torch.int64)},
        config={"mode": "wan", "max_area": max_area},
        seed=seed,
    )


def comfy_crop(h: int, w: int, width: int, height: int) -> tuple[int, int, int, int]:
    old_aspect = w / h
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((w - w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((h - h * (old_aspect / new_aspect)) / 2)
    return x, y, w - 2 * x, h - 2 * y


def comfy_case(name: str, h: int, w: int, width: int, height: int, seed: int) -> None:
    gen = common.seed_everything(seed)
    pixels = random_image(gen, h, w)
    img = torch.from_numpy(pixels.copy()).float().div(255.0).permute(2, 0, 1)[None]
    x, y, cw, ch = comfy_crop(h, w, width, height)
    cropped = img.narrow(-2, y, ch).narrow(-1, x, cw)
    fitted = F.interpolate(cropped, size=(height, width), mode="bilinear")[0]
    common.write_case(
        name,
        component="image_fit",
        description=f"ComfyUI centre-crop fit of a {w}x{h} image to {width}x{height} (bilinear, [0, 1])",
        inputs={"image": torch.from_numpy(pixels.copy()).float()},
        expected={
            "fitted": fitted,
            "size": torch.tensor([height, width], dtype=torch.int64),
            "crop": torch.tensor([x, y, cw, ch], dtype=torch.int64),
        },
        config={"mode": "comfy", "width": width, "height": height},
        seed=seed,
    )


def sizes_case() -> None:
    shapes = [(480, 832), (832, 480), (720, 1280), (1080, 1920), (1920, 1080), (1000, 1000),
              (3024, 4032), (4032, 3024), (600, 800), (1080, 1350), (512, 2048), (2048, 512),
              (1, 1), (333, 517), (1200, 1600), (2160, 3840), (97, 1013)]
    areas = [480 * 832, 720 * 1280, 704 * 1280]
    rows = []
    for max_area in areas:
        for h, w in shapes:
            rows.append([h, w, max_area, *wan_size(h, w, max_area)])
    table = torch.tensor(rows, dtype=torch.int64)
    common.write_case(
        "image_fit_wan_sizes",
        component="image_fit",
        description="official Wan output size for many source shapes at the 480p, 720p and 5B areas",
        inputs={"shapes": table[:, :3].float()},
        expected={"sizes": table[:, 3:]},
        config={"mode": "wan_sizes"},
    )


def generate() -> None:
    wan_case("image_fit_wan_down_landscape", 61, 97, 32 * 48, seed=1)
    wan_case("image_fit_wan_up_portrait", 23, 15, 40 * 24, seed=2)
    wan_case("image_fit_wan_square_odd", 37, 37, 20 * 36, seed=3)
    wan_case("image_fit_wan_strong_down", 150, 200, 32 * 24, seed=6)
    comfy_case("image_fit_comfy_wide_to_tall", 30, 50, 16, 32, seed=4)
    comfy_case("image_fit_comfy_tall_to_wide", 45, 20, 48, 32, seed=5)
    sizes_case()
