#!/usr/bin/env bash
# Mirrors CI exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo xtask test
