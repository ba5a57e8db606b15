"""Makes the official Wan2.2 code (the `wan22` wheel, package `wan`) run on a CPU in float32.

Two shims, both documented in ../shared/docs/reference-notes.md:
- `wan/__init__.py` imports every pipeline (animate, speech-to-video…) and their heavy optional
  dependencies; we register the package without running it and import only the modules we use.
- `wan/modules/t5.py` evaluates `torch.cuda.current_device()` as a default argument at import.
- `flash_attention` asserts CUDA and half precision; we replace it with an exact float32
  attention that honours `k_lens` (keys past each sample's length are masked out), which is
  what flash-attention's varlen call computes.

Usage:  from wan_shims import load_wan;  wan = load_wan();  wan.modules.model.WanModel(...)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch


def exact_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None,
                    q_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                    dtype=torch.bfloat16, version=None):
    """q: [B, Lq, N, D], k/v: [B, Lk, N, D] -> [B, Lq, N, D] in q's dtype, computed in float32."""
    assert not causal and window_size == (-1, -1) and dropout_p == 0.0
    out_dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    if q_scale is not None:
        q = q * q_scale
    scale = softmax_scale if softmax_scale is not None else q.size(-1) ** -0.5
    scores = torch.einsum("blnd,bsnd->bnls", q, k) * scale
    if k_lens is not None:
        key_index = torch.arange(k.size(1), device=k.device)[None, :]
        masked = key_index >= k_lens.to(k.device)[:, None]
        scores = scores.masked_fill(masked[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    out = torch.einsum("bnls,bsnd->blnd", weights, v)
    return out.to(out_dtype)


def load_wan():
    """Returns the `wan` package with the CPU shims applied (idempotent)."""
    torch.cuda.current_device = lambda: 0
    if "wan" not in sys.modules:
        spec = importlib.util.find_spec("wan")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("the wan22 wheel is not installed (see tests/reference/requirements-nodeps.txt)")
        package = types.ModuleType("wan")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["wan"] = package
    attention = importlib.import_module("wan.modules.attention")
    model = importlib.import_module("wan.modules.model")
    attention.flash_attention = exact_attention
    model.flash_attention = exact_attention
    importlib.import_module("wan.modules.vae2_1")
    importlib.import_module("wan.modules.vae2_2")
    importlib.import_module("wan.modules.t5")
    importlib.import_module("wan.utils.fm_solvers_unipc")
    return sys.modules["wan"]
