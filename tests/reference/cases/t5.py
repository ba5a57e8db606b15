"""umT5 text encoder (component `umt5`) and its tokenizers (component `tokenizer`).

Encoder cases: a tiny-config transformers `UMT5EncoderModel` with random weights, run with
attention masks, saved in the layouts users have (ComfyUI's single file, diffusers' sharded
folder), and the official `wan/modules/t5.py` `T5Encoder` on the same weights in Wan-native
naming, saved as a PyTorch pickle like `models_t5_umt5-xxl-enc-bf16.pth`.

Tokenizer cases: see `_tokenizer_cases` below.
"""

from __future__ import annotations

import io
import json

import torch
from transformers import UMT5Config, UMT5EncoderModel

import common
from wan_shims import load_wan

SEED = 5
# Tiny, but with every structural feature of umt5-xxl: inner attention width (heads × d_kv)
# different from d_model, 32 buckets with max distance 128 (the official code hard-codes 128),
# and sequences long enough to reach the logarithmic and the saturated buckets.
TINY = dict(
    vocab_size=96,
    d_model=32,
    d_kv=6,
    d_ff=40,
    num_heads=4,
    num_layers=2,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
)
LENGTHS = [140, 37]
TEXT_LEN = 160


def _hf_to_wan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF UMT5 key naming -> the official Wan2.2 T5Encoder naming."""
    out = {"token_embedding.weight": state["shared.weight"], "norm.weight": state["encoder.final_layer_norm.weight"]}
    for i in range(TINY["num_layers"]):
        hf = f"encoder.block.{i}.layer."
        wan = f"blocks.{i}."
        for p in "qkvo":
            out[f"{wan}attn.{p}.weight"] = state[f"{hf}0.SelfAttention.{p}.weight"]
        out[f"{wan}pos_embedding.embedding.weight"] = state[f"{hf}0.SelfAttention.relative_attention_bias.weight"]
        out[f"{wan}norm1.weight"] = state[f"{hf}0.layer_norm.weight"]
        out[f"{wan}norm2.weight"] = state[f"{hf}1.layer_norm.weight"]
        out[f"{wan}ffn.gate.0.weight"] = state[f"{hf}1.DenseReluDense.wi_0.weight"]
        out[f"{wan}ffn.fc1.weight"] = state[f"{hf}1.DenseReluDense.wi_1.weight"]
        out[f"{wan}ffn.fc2.weight"] = state[f"{hf}1.DenseReluDense.wo.weight"]
    return out


def _encoder_cases() -> None:
    gen = common.seed_everything(SEED)
    config = UMT5Config(
        **TINY,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        attn_implementation="eager",
    )
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "relative" in name else p.shape[-1] ** -0.5))
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}

    length = max(LENGTHS)
    ids = torch.randint(1, TINY["vocab_size"], (len(LENGTHS), length), generator=gen)
    mask = torch.zeros(len(LENGTHS), length, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
        ids[b, n:] = 0  # pad id, as the tokenizer pads
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    cfg = dict(TINY, checkpoint="")
    inputs = {"input_ids": ids, "attention_mask": mask}

    common.write_case(
        "umt5_comfyui_file_masked",
        component="umt5",
        description="transformers UMT5EncoderModel (tiny, random weights) with padding masks; one HF-named safetensors file as ComfyUI ships",
        weights={"umt5_tiny.safetensors": state},
        inputs=inputs,
        expected={"hidden_states": hidden},
        config=dict(cfg, checkpoint="umt5_tiny.safetensors"),
        seed=SEED,
    )

    keys = sorted(state)
    half = len(keys) // 2
    shards = {
        "model-00001-of-00002.safetensors": {k: state[k] for k in keys[:half]},
        "model-00002-of-00002.safetensors": {k: state[k] for k in keys[half:]},
    }
    index = {
        "metadata": {"total_size": sum(v.numel() * 4 for v in state.values())},
        "weight_map": {k: f for f, part in shards.items() for k in part},
    }
    common.write_case(
        "umt5_diffusers_sharded",
        component="umt5",
        description="the same tiny UMT5EncoderModel as a diffusers text_encoder/ folder: two shards and an index",
        weights=shards,
        inputs=inputs,
        expected={"hidden_states": hidden},
        config=dict(cfg, checkpoint="model.safetensors.index.json"),
        extra_files={"model.safetensors.index.json": json.dumps(index, indent=2, sort_keys=True).encode()},
        seed=SEED,
    )

    wan = load_wan()
    t5 = wan.modules.t5
    official = t5.T5Encoder(
        vocab=TINY["vocab_size"],
        dim=TINY["d_model"],
        dim_attn=TINY["d_kv"] * TINY["num_heads"],
        dim_ffn=TINY["d_ff"],
        num_heads=TINY["num_heads"],
        num_layers=TINY["num_layers"],
        num_buckets=TINY["relative_attention_num_buckets"],
        shared_pos=False,
        dropout=0.0,
    ).eval()
    wan_state = _hf_to_wan(state)
    official.load_state_dict(wan_state, strict=True)
    with torch.no_grad():
        official_hidden = official(ids, mask)
    # As T5EncoderModel.__call__ returns it and the pipeline feeds the DiT: the real tokens'
    # states, zero-padded to text_len.
    context = torch.zeros(len(LENGTHS), TEXT_LEN, TINY["d_model"])
    for b, n in enumerate(LENGTHS):
        context[b, :n] = official_hidden[b, :n]
    buffer = io.BytesIO()
    torch.save({k: v.clone() for k, v in wan_state.items()}, buffer)
    common.write_case(
        "umt5_wan_official_pth",
        component="umt5",
        description="official wan/modules/t5.py T5Encoder on the same weights in Wan naming, read from a PyTorch pickle; masked states and the padded context",
        weights={},
        inputs=inputs,
        expected={"hidden_states": official_hidden, "context": context},
        config=dict(cfg, checkpoint="models_t5_tiny.pth", text_len=TEXT_LEN),
        extra_files={"models_t5_tiny.pth": buffer.getvalue()},
        seed=SEED,
    )
    print("  hf vs official rel l2:", float((official_hidden - hidden).norm() / hidden.norm()))


def generate() -> None:
    _encoder_cases()
