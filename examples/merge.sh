#!/usr/bin/env bash
# Task deltas, merging and ConDU's continual sessions: fine-tune `tiny` on three toy tasks, turn each fine-tune into
# a delta, unify them (ConDU: one delta + a 1-bit mask and a rescaler per task), rebuild the experts, and compare.
# About 2.5 minutes on a 2-core CPU beside another job (2026-12-06, the ViT `tiny`).
set -euo pipefail
out=${1:-$(mktemp -d)}

for task in food mnist cars; do
    cftool finetune --zs tiny --data "toy:$task" --shots 16 --method full --iterations 20 --lr 1e-4 --force \
        -o "$out/finetuned/$task.safetensors"
    cftool delta "$out/finetuned/$task.safetensors" --zs tiny -o "$out/deltas/$task.safetensors" --force
done

# Session 1 holds food and mnist; session 2 adds cars without the old deltas (decouple, append, unify again).
cftool unify "$out/deltas/food.safetensors" "$out/deltas/mnist.safetensors" -o "$out/session1.st" --force
cftool unify --into "$out/session1.st" "$out/deltas/cars.safetensors" -o "$out/session2.st" --force
cftool inspect "$out/session2.st"                              # tasks, rescalers, mask density

# Every expert as a delta, one as a full model that eval takes as it is.
cftool decouple "$out/session2.st" --all -o "$out/experts" --force
cftool decouple "$out/session2.st" --task mnist --as model -o "$out/mnist-expert.safetensors" --force

# The other merges write one delta; `delta apply` turns a delta into a model.
cftool unify "$out"/deltas/*.safetensors --method ties -o "$out/ties.safetensors" --force
cftool delta apply "$out/ties.safetensors" --zs tiny -o "$out/ties-model.safetensors" --force
cftool eval "$out/finetuned/mnist.safetensors" "$out/mnist-expert.safetensors" "$out/ties-model.safetensors" \
    --data toy:mnist
echo "deltas, unified sets and experts: $out"
