#!/usr/bin/env bash
# Zero-shot accuracy of the embedded `tiny` CLIP: per task, on class halves, as JSON, and from a YAML config.
# About 5 minutes on a 2-core CPU shared with other jobs (2026-12-05).
set -euo pipefail
out=${1:-$(mktemp -d)}
cd "$(dirname "$0")"

cftool eval --zs tiny --benchmark mtil-tiny
cftool eval --zs tiny --benchmark base2new-tiny --json > "$out/base2new.json"
cftool eval --zs tiny --data toy:mnist --classes novel
cftool eval --config eval.yaml --batch-size 128      # flags win over the config's keys
echo "base2new JSON: $out/base2new.json"
