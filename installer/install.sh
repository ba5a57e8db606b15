#!/usr/bin/env bash
# Installs a built Stillmotion for the current user: the binary into ~/.local/bin and the
# desktop entry into ~/.local/share/applications. Build first with `cargo xtask run` (or
# `cargo build --release -p stillmotion-app`); pass the binary's path if it is elsewhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stillmotion/target}"
binary="${1:-$target/release/stillmotion}"
if [[ ! -x "$binary" ]]; then
  echo "install.sh: no built binary at $binary; run 'cargo xtask run' first or pass its path" >&2
  exit 1
fi
install -Dm755 "$binary" "$HOME/.local/bin/stillmotion"
install -Dm644 "$here/stillmotion.desktop" "$HOME/.local/share/applications/stillmotion.desktop"
echo "Installed $HOME/.local/bin/stillmotion and its desktop entry."
