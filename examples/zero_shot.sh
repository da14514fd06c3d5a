#!/usr/bin/env bash
# Zero-shot accuracy of the embedded `tiny` CLIP: per task, on class halves, as JSON, and from a YAML config.
# About 2 minutes on a 2-core CPU beside another job (2026-12-06, the ViT `tiny`).
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out" && out=$(cd "$out" && pwd)   # OUT as given, before the cd to the configs
cd "$(dirname "$0")"

cftool eval --zs tiny --benchmark mtil-tiny
cftool eval --zs tiny --benchmark base2new-tiny --json > "$out/base2new.json"
cftool eval --zs tiny --data toy:mnist --classes novel
cftool eval --config eval.yaml --batch-size 128      # flags win over the config's keys
echo "base2new JSON: $out/base2new.json"
