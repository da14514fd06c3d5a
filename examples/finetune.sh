#!/usr/bin/env bash
# Fine-tune the embedded `tiny` CLIP with each method on toy tasks, and evaluate what was learned and forgotten.
# About 3 minutes on a 2-core CPU beside another job (2026-12-06, the ViT `tiny`).
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out" && out=$(cd "$out" && pwd)   # OUT as given, before the cd to the configs
cd "$(dirname "$0")"

# CoOp on 16 shots of each base class of `caltech101`. tiny's logit scale is 21.6 where CLIP's is 100, so the prompt
# needs a larger lr than CoOp's 2e-3. Base accuracy rises and novel accuracy falls: what MergeTune repairs.
# Nothing routes to this prompt: --no-prototypes skips ConDU's prototypes (a pass over the whole training split).
cftool finetune --zs tiny --data toy:caltech101 --classes base --shots 16 --method coop --epochs 50 --lr 0.05 \
    --no-prototypes -o "$out/coop.safetensors"
for classes in base novel; do
    cftool eval --zs tiny --data toy:caltech101 --classes "$classes"
    cftool eval "$out/coop.safetensors" --data toy:caltech101 --classes "$classes"
done

# A linear head from flags, and LoRA from a YAML config, on 16 shots per class of `food`.
cftool finetune --zs tiny --data toy:food --shots 16 --method head --epochs 20 --lr 0.01 --eval \
    -o "$out/head.safetensors"
cftool finetune --config finetune.yaml --eval -o "$out/lora.safetensors"

# Every weight of both towers, saving the trainer state every 5 steps (`--resume` continues an interrupted run).
# The other tasks' zero-shot accuracy drops: catastrophic forgetting.
cftool finetune --zs tiny --data toy:food --shots 16 --method full --epochs 5 --lr 1e-4 --checkpoint-every 5 \
    --eval -o "$out/full.safetensors"
cftool eval "$out/full.safetensors" --benchmark mtil-tiny
cftool inspect "$out/coop.safetensors"
echo "checkpoints and prototypes: $out"
