"""umT5 text encoder (component `umt5`) and its tokenizers (component `tokenizer`).

Encoder cases: a tiny-config transformers `UMT5EncoderModel` with random weights, run with
attention masks, saved in the layouts users have (ComfyUI's single file, diffusers' sharded
folder), and the official `wan/modules/t5.py` `T5Encoder` on the same weights in Wan-native
naming, saved as a PyTorch pickle like `models_t5_umt5-xxl-enc-bf16.pth`.

Tokenizer cases: a tiny SentencePiece Unigram model trained here (umt5's special-token layout:
<pad>=0, </s>=1, <unk>=2), once with nmt_nfkc normalisation and byte fallback (as umt5) and once
with identity normalisation and no byte fallback. Reference ids come from the official
`wan/modules/tokenizers.py` `HuggingfaceTokenizer` (transformers `AutoTokenizer` on the folder,
512 tokens), with its prompt cleaning and without; each case carries the tokenizer in all three
forms users have (tokenizer.json, spiece.model, a `spiece_model` tensor in a text-encoder
safetensors file), and as the `tokenizer.ggml.*` metadata of a GGUF text encoder.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path

import ftfy
import sentencepiece as spm

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

    _gguf_encoder_case(model, state, inputs, cfg)
    _fp8_scaled_case(model, state, inputs, cfg)

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


# HF name fragments -> llama.cpp's T5 names (city96's umt5-xxl GGUF files), applied in reverse
# of ComfyUI-GGUF's map.
HF_TO_GGUF = [
    ("encoder.final_layer_norm", "enc.output_norm"),
    ("shared", "token_embd"),
    ("layer.0.SelfAttention.relative_attention_bias", "attn_rel_b"),
    ("layer.0.SelfAttention.q", "attn_q"),
    ("layer.0.SelfAttention.k", "attn_k"),
    ("layer.0.SelfAttention.v", "attn_v"),
    ("layer.0.SelfAttention.o", "attn_o"),
    ("layer.0.layer_norm", "attn_norm"),
    ("layer.1.DenseReluDense.wi_0", "ffn_gate"),
    ("layer.1.DenseReluDense.wi_1", "ffn_up"),
    ("layer.1.DenseReluDense.wo", "ffn_down"),
    ("layer.1.layer_norm", "ffn_norm"),
    ("encoder.block.", "enc.blk."),
]


def _gguf_name(hf: str) -> str:
    for a, b in HF_TO_GGUF:
        hf = hf.replace(a, b)
    return hf


def _gguf_encoder_case(model, state, inputs, cfg) -> None:
    """The same encoder as city96's umt5-xxl GGUF files lay it out: architecture `t5encoder`,
    llama.cpp tensor names, Q8_0 matrices where the input width is a whole number of 32-wide
    blocks, F16 other matrices, F32 norms. The reference is the HF model on the dequantized
    weights."""
    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "umt5_tiny_Q8_0.gguf"
        writer = gguf.GGUFWriter(str(path), "t5encoder")
        dequantized = {}
        for name, p in sorted(state.items()):
            data = p.detach().float().numpy()
            if data.ndim == 2 and data.shape[1] % 32 == 0:
                q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(_gguf_name(name), q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                deq = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(data.shape)
            elif data.ndim == 2:
                half = data.astype(np.float16)
                writer.add_tensor(_gguf_name(name), half)
                deq = half.astype(np.float32)
            else:
                writer.add_tensor(_gguf_name(name), data)
                deq = data
            dequantized[name] = torch.from_numpy(np.ascontiguousarray(deq, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        blob = path.read_bytes()
    reference = UMT5EncoderModel(model.config).eval()
    missing, unexpected = reference.load_state_dict(dequantized, strict=False)
    assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}, (missing, unexpected)
    with torch.no_grad():
        hidden = reference(**inputs).last_hidden_state
    common.write_case(
        "umt5_gguf_city96_q8_0",
        component="umt5",
        description="the tiny UMT5EncoderModel as a city96-layout GGUF (t5encoder, llama.cpp names, Q8_0/F16/F32); reference on the dequantized weights",
        weights={},
        inputs=inputs,
        expected={"hidden_states": hidden},
        config=dict(cfg, checkpoint="umt5_tiny_Q8_0.gguf"),
        extra_files={"umt5_tiny_Q8_0.gguf": blob},
        seed=SEED,
    )


def _fp8_scaled_case(model, state, inputs, cfg) -> None:
    """ComfyUI's `umt5_xxl_fp8_e4m3fn_scaled.safetensors` layout: HF names, every Linear weight
    float8_e4m3fn with a float32 0-dim `scale_weight` (per-tensor absmax / 448), a `scaled_fp8`
    marker, the rest (embedding, position biases, norms) in bfloat16. The reference is the HF
    model on `stored.float() * scale` (ComfyUI's dequantization), so a loader that drops the
    scale is off by hundreds."""
    fp8 = torch.float8_e4m3fn
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    stored = {}
    dequantized = {}
    for name, p in sorted(state.items()):
        layer = name.rsplit(".", 1)[0]
        if layer in linears and name.endswith(".weight"):
            scale = (p.abs().max() / torch.finfo(fp8).max).to(torch.float32)
            q = (p / scale).to(fp8)
            stored[name] = q
            stored[f"{layer}.scale_weight"] = scale.reshape(())
            dequantized[name] = q.to(torch.float32) * scale
        else:
            stored[name] = p.to(torch.bfloat16)
            dequantized[name] = stored[name].to(torch.float32)
    stored["scaled_fp8"] = torch.empty(0, dtype=fp8)
    reference = UMT5EncoderModel(model.config).eval()
    missing, unexpected = reference.load_state_dict(dequantized, strict=False)
    assert not unexpected and set(missing) <= {"encoder.embed_tokens.weight"}, (missing, unexpected)
    with torch.no_grad():
        hidden = reference(**inputs).last_hidden_state
    common.write_case(
        "umt5_comfyui_fp8_scaled",
        component="umt5",
        description="the tiny UMT5EncoderModel as ComfyUI's umt5_xxl_fp8_e4m3fn_scaled file: float8_e4m3fn Linear weights + scale_weight, scaled_fp8 marker, bf16 rest; reference on the dequantized weights",
        weights={"umt5_tiny_fp8_e4m3fn_scaled.safetensors": stored},
        inputs=inputs,
        expected={"hidden_states": hidden},
        config=dict(cfg, checkpoint="umt5_tiny_fp8_e4m3fn_scaled.safetensors"),
        seed=SEED,
    )


def _gguf_tokenizer_file(spiece: bytes) -> bytes:
    """A GGUF text encoder carrying the SentencePiece model as llama.cpp's T5 converter writes
    it (`tokenizer.ggml.*`: tokens, scores, SentencePiece piece types, precompiled charsmap) and
    a stand-in embedding tensor."""
    import gguf
    import numpy as np
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spiece)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "umt5.gguf"
        writer = gguf.GGUFWriter(str(path), "t5encoder")
        writer.add_tokenizer_model("t5")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([p.piece for p in proto.pieces])
        writer.add_token_scores([float(p.score) for p in proto.pieces])
        writer.add_token_types([int(p.type) for p in proto.pieces])
        writer.add_precompiled_charsmap(proto.normalizer_spec.precompiled_charsmap)
        writer.add_unk_token_id(2)
        writer.add_eos_token_id(1)
        writer.add_pad_token_id(0)
        writer.add_add_eos_token(True)
        writer.add_tensor("token_embd.weight", np.zeros((len(proto.pieces), 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
WORDS = (
    "a cat sits on the mat while sun shines over golden hills and river flows slowly camera pans left "
    "zoom in cinematic lighting beautiful girl dancing in rain close up shot of an old man smiling "
    "drone flying above city at night neon lights reflect on wet street slow motion waves crash"
).split()


def _corpus(rng: random.Random) -> list[str]:
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(600)]
    lines += [NEGATIVE_PROMPT] * 30
    lines += [
        "Ünïcödé café naïve résumé Ærøskøbing",
        "日本語のテキスト、カタカナ、ひらがな",
        "한국어 문장입니다 영상 생성",
        "مرحبا بالعالم وصف المشهد",
        "שלום עולם תיאור הסצנה",
        "Привет мир красивое видео",
        "Καλημέρα κόσμε",
        "1234567890 !?.,;:'\"()[]{}-+=*/%$#@&",
    ] * 15
    return lines


def _prompts(rng: random.Random) -> list[str]:
    """At least 200 prompts across the Unicode cases the issue names."""
    fixed = [
        "", " ", "   \t\n  ", "a", "A cat.", NEGATIVE_PROMPT, NEGATIVE_PROMPT + " " + NEGATIVE_PROMPT,
        "一只猫坐在垫子上，阳光明媚，电影感镜头", "夜晚的城市，霓虹灯倒映在潮湿的街道上", "画面：静止不动 ",
        "東京の夜景、ネオンが光る", "ｶﾀｶﾅ ﾊﾝｶｸ", "한국의 아름다운 풍경", "ภาษาไทย สวัสดี", "हिन्दी में वीडियो",
        "مرحبا بالعالم", "שלום עולם", "mixed English עברית و العربية 中文", "\u202eRTL override\u202c text",
        "\u200fright-to-left mark\u200e", "Привет мир", "Ελληνικά γράμματα",
        "emoji 😀🎬🐱", "family 👨‍👩‍👧‍👦 and flags 🇨🇳🇺🇸", "skin tones 👍🏽👍🏿", "keycap 1️⃣ #️⃣", "❤️ love ❤",
        "e\u0301 vs é", "Z̷̢͉̈a̶̗͋l̸̰̀g̴̝̓o̵̜͊ text", "n\u0303 a\u030a o\u0308", "ﬁne ﬂow ﬃ ligatures ĳ Ǆ",
        "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ　１２３！", "half ｱｲｳ width", "“curly” ‘quotes’ ‛odd‟ ʼn",
        "tab\there", "new\nline", "crlf\r\nline", "cr\ronly", "nel\x85next", "ls\u2028ps\u2029end",
        "null\x00byte", "bell\x07 and \x1b[1;31mcolour\x1b[0m", "del\x7f", "bom\ufeffinside", "\ufeffleading bom",
        "zero\u200bwidth", "zwj\u200djoin", "nbsp\u00a0space", "ideographic\u3000space", "en\u2002em\u2003thin\u2009",
        "c1 \x80\x93\x94 controls", "interlinear \ufff9a\ufffab\ufffb", "obj \ufffc rep",
        "&amp; &lt;b&gt; &quot;q&quot; &#39;s &#x27;t", "&amp;amp;lt;double&amp;amp;gt;", "&copy 2024 &reg &trade;",
        "&nbsp;&nbsp;spaced&nbsp;", "&notin; &noti &notit;", "&#128512; &#x1F600; &#0; &#1; &#x110000;",
        "&#128; &#150; &#13; &#x0d;", "a < b &amp; c", "<b>bold</b> &amp; more", "line one &amp;\nline <two> &lt;",
        "&unknown; & ;amp; &#; &#x;", "P&EACUTE;REZ &NTILDE; &LTIMES; &AMP; &nTILDE; &FRAC12;", "&ampamp; &ltlt", "fish &amp chips",
        "</s>", "<pad> padded", "<unk>", "a</s>b", "<extra_id_0> sentinel <extra_id_99>", "<extra_id_100>",
        "▁already▁metaspace", "under_score_words", "UPPER lower MiXeD", "numbers 3.14159 2,718 1e-9",
        "url https://example.com/path?q=1&x=2", "email name@example.org", "path C:\\Users\\me", "math ∑ ∫ √ ∞ ≠ ≤",
        "arrows ← → ↑ ↓", "box ┌─┐ │ └─┘", "currency $ € £ ¥ ₹ ₿", "music 𝄞 𝅘𝅥𝅮", "old italic 𐌰𐌱", "rare 𠀀𠀁",
        "cafÃ© au lait", "â€œquotedâ€\x9d text", "SchÃ¶ne GrÃ¼ÃŸe", "doesnÃ¢â‚¬â„¢t work", "l’humanitÃ© Ã©tÃ©",
        "ÃƒÂ©lÃƒÂ¨ve double", "Ã  la carte", "!!!???...", "----====____", "    leading and trailing    ", "multiple     internal     spaces",
        "repeat " * 40, "x" * 300, "長" * 700, " ".join(["word"] * 600), "cinematic " * 520, "，".join([NEGATIVE_PROMPT] * 8),
    ]
    generated = []
    for _ in range(140):
        kind = rng.randrange(5)
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 30))]
        if kind == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["，", "。", "猫", "夜晚", "😀", "é", "ß", "Ω", "&amp;", "  "]))
        elif kind == 2:
            words = [w.capitalize() if rng.random() < 0.3 else w for w in words]
            words.append(rng.choice([".", "!", "?", "...", ","]))
        elif kind == 3:
            words = [NEGATIVE_PROMPT[i : i + rng.randint(1, 8)] for i in sorted(rng.sample(range(len(NEGATIVE_PROMPT)), 4))]
        elif kind == 4:
            words = [rng.choice(WORDS) + rng.choice(["", "s", "ing", "ed", "'s"]) for _ in range(rng.randint(1, 12))]
        generated.append(rng.choice([" ", "  ", "\t"]).join(words))
    return fixed + generated


def _legacy_tokenizer_json(modern: bytes) -> bytes:
    """The layout transformers 4.x wrote (as in the official google/umt5-xxl folder): its own
    normaliser sequence, a lone Metaspace pre-tokenizer, byte fallback on. transformers 5.x
    keeps only its vocabulary, charsmap and special tokens, so the ids must not change."""
    j = json.loads(modern)
    j["normalizer"] = {
        "type": "Sequence",
        "normalizers": [j["normalizer"], {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "▁"}],
    }
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    j["model"]["byte_fallback"] = True
    return json.dumps(j, ensure_ascii=False, indent=2).encode()


def _tokenizer_case(name: str, *, byte_fallback: bool, normalization: str, legacy_json: bool, description: str) -> None:
    rng = random.Random(SEED)
    wan = load_wan()
    tokenizers_module = wan.modules.tokenizers
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus.txt").write_text("\n".join(_corpus(rng)), encoding="utf-8")
        spm.set_random_generator_seed(SEED)
        # Relative paths: the trainer records them in the model, and the bytes must not vary.
        cwd = os.getcwd()
        os.chdir(tmp)
        spm.SentencePieceTrainer.train(
            input="corpus.txt", model_prefix="spiece", model_type="unigram",
            vocab_size=700, hard_vocab_limit=False, character_coverage=0.99, byte_fallback=byte_fallback,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name=normalization,
            num_threads=1, minloglevel=2, seed_sentencepiece_size=100000,
        )
        os.chdir(cwd)
        spm_folder = tmp / "spm"
        spm_folder.mkdir()
        spiece = (tmp / "spiece.model").read_bytes()
        (spm_folder / "spiece.model").write_bytes(spiece)
        config = json.dumps({"tokenizer_class": "T5Tokenizer"}).encode()
        (spm_folder / "tokenizer_config.json").write_bytes(config)
        official = tokenizers_module.HuggingfaceTokenizer(name=str(spm_folder), seq_len=512, clean="whitespace")
        plain = tokenizers_module.HuggingfaceTokenizer(name=str(spm_folder), seq_len=512)
        json_folder = tmp / "json"
        official.tokenizer.save_pretrained(str(json_folder))
        tokenizer_json = (json_folder / "tokenizer.json").read_bytes()
        if legacy_json:
            tokenizer_json = _legacy_tokenizer_json(tokenizer_json)
            (json_folder / "tokenizer.json").write_bytes(tokenizer_json)
        from_json = tokenizers_module.HuggingfaceTokenizer(name=str(json_folder), seq_len=512, clean="whitespace")

        prompts = _prompts(rng)
        assert len(prompts) >= 200

        def flat(tokenizer, texts):
            ids, mask = tokenizer(texts, return_mask=True, add_special_tokens=True)
            lengths = mask.sum(dim=1)
            rows = [ids[i, : int(n)] for i, n in enumerate(lengths)]
            assert all(int(m[int(n):].sum()) == 0 for m, n in zip(mask, lengths))
            return torch.cat(rows).to(torch.int64), lengths.to(torch.int64)

        # ftfy's mojibake repair (fix_encoding) is not ported: prompts it changes are tokenized
        # raw only (tests/golden/README.md lists the gap).
        cleanable = [p for p in prompts if ftfy.fix_text(p) == ftfy.fix_text(p, fix_encoding=False)]
        skipped = [p for p in prompts if p not in cleanable]
        clean_ids, clean_lengths = flat(official, cleanable)
        json_ids, json_lengths = flat(from_json, cleanable)
        assert torch.equal(clean_ids, json_ids) and torch.equal(clean_lengths, json_lengths)
        raw_ids, raw_lengths = flat(plain, prompts)
        json_raw_ids, json_raw_lengths = flat(tokenizers_module.HuggingfaceTokenizer(name=str(json_folder), seq_len=512), prompts)
        assert torch.equal(raw_ids, json_raw_ids) and torch.equal(raw_lengths, json_raw_lengths)

    # One copy of the ids: the runner computes them from each of the three forms and fails
    # naming the form (and prompt) that disagrees.
    expected = {"clean.ids": clean_ids, "clean.lengths": clean_lengths, "raw.ids": raw_ids, "raw.lengths": raw_lengths}
    encoder_file = {"spiece_model": torch.frombuffer(bytearray(spiece), dtype=torch.uint8),
                    "shared.weight": torch.zeros(1, 1)}
    common.write_case(
        name,
        component="tokenizer",
        description=description,
        weights={"umt5_encoder_with_tokenizer.safetensors": encoder_file},
        expected=expected,
        config={"text_len": 512, "prompts": "prompts.json", "tokenizer_json": "tokenizer.json",
                "spiece_model": "spiece.model", "encoder_file": "umt5_encoder_with_tokenizer.safetensors",
                "gguf_file": "umt5_encoder_with_tokenizer.gguf"},
        extra_files={
            "prompts.json": json.dumps({"clean": cleanable, "raw": prompts}, ensure_ascii=True, indent=0).encode(),
            "tokenizer.json": tokenizer_json,
            "spiece.model": spiece,
            "tokenizer_config.json": config,
            "umt5_encoder_with_tokenizer.gguf": _gguf_tokenizer_file(spiece),
        },
        max_abs=0.0,  # ids: any difference fails, however small relative to the whole
        seed=SEED,
    )
    print(f"  {name}: {len(prompts)} prompts, {len(cleanable)} cleaned ({len(skipped)} need ftfy's mojibake repair), "
          f"{int(raw_lengths.sum())} raw tokens, unk share {float((raw_ids == 2).float().mean()):.2f}")


# Pieces the cleaning treats specially, for random strings built from them.
CLEAN_ALPHABET = [
    "a", "B", "7", " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x07",
    "\x1b", "\x1b[", "\x1b[1;32m", "[0m", "\x7f", "\x80", "\x85", "\x93", "\x9d", "\xa0", "\u1680",
    "\u2002", "\u200b", "\u200d", "\u2028", "\u2029", "\u202f", "\u205f", "\u206a", "\u3000", "\ufeff",
    "\ufff9", "\ufffc", "\ufffd", "&", "&amp;", "&amp", "&lt;", "&gt", "&quot;", "&#39;", "&#x27;", "&#",
    "&#x", "&#65", "&#x1F600;", "&#128;", "&#150;", "&#0;", "&#13;", "&#1;", "&#xD800;", "&#99999999;",
    "&nbsp;", "&copy", "&notin;", "&noti", "&not", "&EACUTE;", "&Eacute;", "&LTIMES;", "&AMP;", "&x;",
    ";", "#", "<", ">", "'", "\"", "“", "”", "‘", "’", "ʼ", "‛", "‟", "ﬁ", "ﬀ", "ĳ", "Ǆ", "ŉ", "Ａ", "ｚ",
    "１", "！", "～", "ｶ", "ﾞ", "ﾟ", "ￂ", "￠", "￨", "e", "\u0301", "\u0308", "\u0327", "Å", "Å", "한",
    "\u1100\u1161", "猫", "。", "，", "😀", "👍🏽", "\u200d👩", "🇨🇳", "ß", "İ", "Σ", "ǅ", "ﬆ", "مرحبا", "שלום",
]


def _clean_case() -> None:
    rng = random.Random(SEED + 1)
    texts = ["".join(rng.choice(CLEAN_ALPHABET) for _ in range(rng.randint(0, 14))) for _ in range(700)]
    texts = [t for t in texts if ftfy.fix_text(t) == ftfy.fix_text(t, fix_encoding=False)]
    wan = load_wan()
    tokenizers_module = wan.modules.tokenizers
    cleaned = [tokenizers_module.whitespace_clean(tokenizers_module.basic_clean(t)) for t in texts]
    codepoints = torch.tensor([ord(c) for t in cleaned for c in t], dtype=torch.int64)
    lengths = torch.tensor([len(t) for t in cleaned], dtype=torch.int64)
    common.write_case(
        "prompt_clean_fuzz",
        component="prompt_clean",
        description="the official prompt cleaning (ftfy fix_text, html.unescape twice, whitespace collapse) on random strings of tricky pieces",
        weights={},
        expected={"codepoints": codepoints, "lengths": lengths},
        config={"texts": "texts.json"},
        extra_files={"texts.json": json.dumps(texts, ensure_ascii=True).encode()},
        max_abs=0.0,  # code points: any difference fails
        seed=SEED + 1,
    )
    print(f"  prompt_clean_fuzz: {len(texts)} strings ({700 - len(texts)} left out: ftfy would repair them as mojibake)")


def generate() -> None:
    _encoder_cases()
    _clean_case()
    _tokenizer_case(
        "tokenizer_spm_nfkc_byte_fallback",
        byte_fallback=True,
        normalization="nmt_nfkc",
        legacy_json=True,
        description="tiny SentencePiece Unigram (nmt_nfkc, byte fallback, as umt5; tokenizer.json in transformers 4.x layout): 200+ prompts, ids from wan's HuggingfaceTokenizer with and without prompt cleaning, from all three tokenizer forms",
    )
    _tokenizer_case(
        "tokenizer_spm_identity_plain",
        byte_fallback=False,
        normalization="identity",
        legacy_json=False,
        description="tiny SentencePiece Unigram (identity normalisation: no charsmap, no byte fallback): same prompts and sources",
    )
