"""Regenerates the golden cases in tests/golden/ from the reference implementations.

Usage (developers only; CI never runs Python):
    python3 -m venv .venv
    .venv/bin/pip install -r tests/reference/requirements.txt
    .venv/bin/pip install --no-deps -r tests/reference/requirements-nodeps.txt
    .venv/bin/python tests/reference/generate.py [GROUP ...]

Each group lives in tests/reference/cases/<group>.py and exposes `generate()`. Without
arguments every group runs. Re-running reproduces the same files (fixed seeds, CPU, float32).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import cases  # noqa: E402


def main(argv: list[str]) -> int:
    available = sorted(m.name for m in pkgutil.iter_modules(cases.__path__) if not m.name.startswith("_"))
    groups = argv or available
    unknown = [g for g in groups if g not in available]
    if unknown:
        print(f"unknown group(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    for group in groups:
        print(f"== {group}", flush=True)
        importlib.import_module(f"cases.{group}").generate()
    print(f"tests/golden is {common.case_size_bytes() / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
