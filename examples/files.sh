#!/usr/bin/env bash
# Checkpoint files: materialise a base, inspect it, export a plain open_clip state dict and import it back.
# About 20 seconds on a 2-core CPU beside another job (2026-12-06, the ViT `tiny`).
set -euo pipefail
out=${1:-$(mktemp -d)}

cftool export --zs tiny -o "$out/base.safetensors" --force
cftool inspect "$out/base.safetensors" --check
cftool export "$out/base.safetensors" -o "$out/open_clip_state_dict.pt" --force    # plain open_clip weights
cftool import "$out/open_clip_state_dict.pt" --zs tiny -o "$out/imported.safetensors" --force
cftool eval "$out/imported.safetensors" --data toy:mnist                              # base read from the file
