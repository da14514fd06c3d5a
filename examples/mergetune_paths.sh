#!/usr/bin/env bash
# The three pictures MergeTune argues with, on one task's base and novel classes: the linear paths
# zero-shot → CoOp, zero-shot → CoOp + MergeTune and CoOp → CoOp + MergeTune (loss and accuracy against α).
#
#   examples/mergetune_paths.sh [OUT] [PICTURES]     # PICTURES defaults to OUT; needs `pip install 'cftool-clip[plot]'`
#
# About a minute on a 2-core CPU beside another job (2026-12-06, the ViT `tiny`).
set -euo pipefail
out=${1:-runs/paths}
pictures=${2:-$out}
task=${TASK:-caltech101}
export COLUMNS=${COLUMNS:-160}

[ -f "$out/coop.safetensors" ] || cftool finetune --zs tiny --data "toy:$task" --classes base --shots 16 \
    --method coop --epochs 50 --lr 0.05 --no-prototypes -o "$out/coop.safetensors"   # no routing: no prototypes
[ -f "$out/coop.mergetune.safetensors" ] || cftool continue "$out/coop.safetensors" --zs tiny --inherit-recipe \
    --no-prototypes   # CoOp's recipe, as in RESULTS.md

mkdir -p "$pictures"
coop="CoOp=$out/coop.safetensors"  # LABEL=FILE: the pictures' axes and the tables say the label
continued="CoOp+MergeTune=$out/coop.mergetune.safetensors"
for pair in "zs $coop zs-coop" "zs $continued zs-mergetune" "$coop $continued coop-mergetune"; do
    set -- $pair
    cftool eval --path "$1" "$2" --data "toy:$task" --classes base,novel --plot "$pictures/path-$3.png" --force \
        -o "$out/path-$3.json"
done
echo "pictures in $pictures, the curves as JSON in $out/path-*.json"
