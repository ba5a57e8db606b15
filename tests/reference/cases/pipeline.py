"""The whole I2V render (component `pipeline`): the official `WanI2V.generate` itself
(wan/image2video.py, `lightning=False`) on tiny random-weight models, from a PNG to frames.

`WanI2V` is built with `object.__new__` (its constructor loads the released 14B checkpoints)
and given:
- two tiny official `WanModel` i2v experts (36 → 16 channels, text_len 512), saved in the
  original Wan layout with a sidecar `<stem>.json` config, as a user's single files would be;
- a tiny official `WanVAE_` (Wan2.1 architecture, base dim 2) behind the two calls
  `Wan2_1_VAE` makes (`encode`/`decode` with the latent scale, decode clamped), saved in the
  original layout with a sidecar config;
- a text encoder doing exactly what the official `T5EncoderModel.__call__` does
  (`HuggingfaceTokenizer(seq_len=512, clean="whitespace")`, then the real-length rows) with a
  tiny transformers `UMT5EncoderModel` (numerically the official T5 encoder: see the `umt5`
  cases), saved in the HF-T5 layout with its `config.json` as sidecar and `tokenizer.json`
  beside it (the tiny SentencePiece tokenizer of the `tokenizer_spm_identity_plain` case).

The noise is the one `generate` draws from the seed on the CPU, saved as `noise` (no batch
dimension, as the reference makes it) so our render injects it. Expected: `frames`, the
uint8 frames as the official `save_video` writes them ((x + 1) / 2 · 255, truncated), stored
as float; `reference_video.safetensors` holds the float frames in [-1, 1] before uint8.
"""
from __future__ import annotations

import importlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save
from transformers import UMT5Config, UMT5EncoderModel

import common
from wan_shims import load_wan

BOUNDARY = 0.9
PROMPT = "a small red boat drifts across a calm lake at sunset"
NEGATIVE = "blurry, static, low quality"
DIT = dict(dim=32, ffn_dim=48, freq_dim=32, text_dim=24, text_len=512, num_heads=2, num_layers=2, eps=1e-6)
VAE = dict(z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
           temperal_downsample=[False, True, True], dropout=0.0)
VAE_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
VAE_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
           3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
TOKENIZER_CASE = common.GOLDEN_DIR / "tokenizer_spm_identity_plain"


def _randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "modulation" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))


def _expert(wan, gen):
    model = wan.modules.model.WanModel(model_type="i2v", patch_size=(1, 2, 2), in_dim=36, out_dim=16,
                                       window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, **DIT).eval()
    _randomize(model, gen)
    return model


def _vae(wan, gen, dim):
    model = wan.modules.vae2_1.WanVAE_(dim=dim, **VAE).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("proj.weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def _image(gen, width, height) -> Image.Image:
    # Smooth colour gradients plus a little texture: something a VAE can carry.
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    rgb = torch.stack([x, y, 1 - 0.5 * (x + y)]) + 0.08 * torch.randn(3, height, width, generator=gen)
    arr = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def generate() -> None:
    # name, seed, max-area width × height, source image size, frames, steps, shift,
    # guide_scale (low-noise, high-noise), VAE base dim
    _case("pipeline_i2v_official_tiny", 1313, (64, 48), (64, 48), 5, 4, 5.0, (3.0, 3.5), 2)
    # A source image that must be resized (and changes aspect: 50×40 → 32×16), 9 frames,
    # guidance 1.0 on the low-noise expert (official still runs both passes: equal to rounding).
    _case("pipeline_i2v_official_resize_9f", 1414, (32, 32), (50, 40), 9, 3, 3.0, (1.0, 4.0), 2)


def _case(case_name, seed, area, source, frames, steps, shift, guide, vae_dim) -> None:
    width, height = area
    wan = load_wan()
    image2video = importlib.import_module("wan.image2video")
    tokenizers = importlib.import_module("wan.modules.tokenizers")
    gen = common.seed_everything(seed)
    high, low = _expert(wan, gen), _expert(wan, gen)
    vae_model = _vae(wan, gen, vae_dim)
    image = _image(gen, *source)

    tok_files = {n: (TOKENIZER_CASE / n).read_bytes() for n in ("tokenizer.json", "tokenizer_config.json")}
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for n, b in tok_files.items():
            (Path(tmp) / n).write_bytes(b)
        tokenizer = tokenizers.HuggingfaceTokenizer(name=tmp, seq_len=512, clean="whitespace")
    vocab = len(tokenizer.tokenizer)
    t5_config = UMT5Config(vocab_size=vocab, d_model=DIT["text_dim"], d_kv=6, d_ff=40, num_heads=4, num_layers=2,
                           relative_attention_num_buckets=32, relative_attention_max_distance=128,
                           feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                           attn_implementation="eager")
    t5 = UMT5EncoderModel(t5_config).eval()
    with torch.no_grad():
        for name, p in t5.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "relative" in name else p.shape[-1] ** -0.5))

    def text_encoder(texts, device):
        ids, mask = tokenizer(texts, return_mask=True, add_special_tokens=True)
        with torch.no_grad():
            context = t5(input_ids=ids, attention_mask=mask).last_hidden_state
        seq_lens = mask.gt(0).sum(dim=1).long()
        return [u[:v] for u, v in zip(context, seq_lens)]

    scale = [torch.tensor(VAE_MEAN), 1.0 / torch.tensor(VAE_STD)]
    vae = SimpleNamespace(
        encode=lambda videos: [vae_model.encode(u.unsqueeze(0), scale).float().squeeze(0) for u in videos],
        decode=lambda zs: [vae_model.decode(u.unsqueeze(0), scale).float().clamp_(-1, 1).squeeze(0) for u in zs],
    )

    pipe = object.__new__(image2video.WanI2V)
    pipe.device = torch.device("cpu")
    pipe.rank, pipe.sp_size = 0, 1
    pipe.vae_stride, pipe.patch_size = (4, 8, 8), (1, 2, 2)
    pipe.num_train_timesteps, pipe.boundary = 1000, BOUNDARY
    pipe.param_dtype = torch.float32
    pipe.t5_cpu, pipe.init_on_cpu, pipe.lightning = True, False, False
    pipe.sample_neg_prompt = "unused: the case passes its own negative prompt"
    pipe.text_encoder = text_encoder
    pipe.vae = vae
    pipe.high_noise_model, pipe.low_noise_model = high, low

    log = []
    hook = high.register_forward_pre_hook(lambda m, a, kw: log.append(a[0][0].clone()), with_kwargs=True)
    with torch.no_grad():
        video = pipe.generate(PROMPT, image, max_area=width * height, frame_num=frames, shift=shift,
                              sample_solver="unipc", sampling_steps=steps, guide_scale=guide,
                              n_prompt=NEGATIVE, seed=seed, offload_model=False)
    hook.remove()
    noise = log[0]  # the first model input is the noise generate drew
    _, _, height, width = video.shape
    # save_video: (x + 1) / 2 in [0, 1] (clamped), × 255, truncated to uint8; frames as [F, H, W, 3].
    rgb8 = (video.clamp(-1, 1).add(1).div(2).mul(255)).to(torch.uint8).permute(1, 2, 3, 0)

    png = io.BytesIO()
    image.save(png, format="PNG")
    dit_json = json.dumps(dict(model_type="i2v", patch_size=[1, 2, 2], in_dim=36, out_dim=16,
                               qk_norm=True, cross_attn_norm=True, **DIT)).encode()
    vae_json = json.dumps(dict(base_dim=vae_dim, z_dim=16, dim_mult=VAE["dim_mult"],
                               num_res_blocks=VAE["num_res_blocks"], attn_scales=[],
                               temporal_downsample=VAE["temperal_downsample"])).encode()
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    common.write_case(
        case_name,
        component="pipeline",
        description="the official WanI2V.generate (lightning=False) end to end on tiny random-weight "
                    f"experts, VAE and umT5: {source[0]}x{source[1]} PNG to {width}x{height}, {frames} frames, {steps} UniPC steps, "
                    f"shift {shift}, guidance (low {guide[0]}, high {guide[1]}), injected noise",
        weights={"high_noise.safetensors": high.state_dict(), "low_noise.safetensors": low.state_dict(),
                 "wan_2.1_vae.safetensors": vae_model.state_dict(), "umt5.safetensors": t5_state},
        inputs={"noise": noise},
        expected={"frames": rgb8.to(torch.float32)},
        config={"prompt": PROMPT, "negative_prompt": NEGATIVE, "image": "image.png",
                "width": area[0], "height": area[1], "num_frames": frames, "steps": steps, "shift": shift,
                "cfg_high_noise": guide[1], "cfg_low_noise": guide[0], "boundary": BOUNDARY,
                "sampler": "unipc"},
        rel_l2=1e-3,
        max_abs=1.0,
        reason="uint8 frames (truncated as save_video does): float rounding moves a value across "
               "an integer in a few pixels, by 1 level; tests/pipeline.rs also checks PSNR >= 40 dB",
        seed=seed,
        extra_files={"image.png": png.getvalue(), "high_noise.json": dit_json, "low_noise.json": dit_json,
                     "wan_2.1_vae.json": vae_json, "umt5.json": t5.config.to_json_string().encode(),
                     **tok_files,
                     "reference_video.safetensors": save({"video": video.contiguous()})},
    )
