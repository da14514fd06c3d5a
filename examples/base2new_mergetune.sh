#!/usr/bin/env bash
# The base-to-novel study of MergeTune on base2new-tiny: zero-shot, CoOp, CoOp + MergeTune (with its own recipe, and
# with CoOp's) and the weight-space ensemble of CoOp with zero-shot, over every task and three seeds, ending with one
# table averaged over the seeds.
#
#   examples/base2new_mergetune.sh [OUT]            # all ten tasks, seeds 0 1 2: about 27 minutes on one core
#                                                   # of a 2-core CPU beside another job (the ViT tiny, RESULTS.md)
#   TASKS="flowers mnist" SEEDS="0" examples/base2new_mergetune.sh /tmp/b2n    # a smaller run
set -euo pipefail
out=${1:-runs/base2new}
tasks=${TASKS:-aircraft caltech101 cifar100 dtd eurosat flowers food mnist cars sun397}
seeds=${SEEDS:-0 1 2}
export COLUMNS=${COLUMNS:-200}   # the final table is wide; keep it unwrapped when written to a file

# Index of the α whose accuracy is highest (the first of equals: the one closest to zero-shot) in an `eval --path`
# JSON report on stdin.
best_alpha() {
    python3 -c 'import json, sys
report = json.load(sys.stdin)
accuracy = report["curves"][0]["accuracy"]
print(report["alphas"][max(range(len(accuracy)), key=accuracy.__getitem__)])'
}

# Nothing here routes, so no run writes prototypes (--no-prototypes skips their pass over each training split).
for seed in $seeds; do
    for task in $tasks; do
        run="$out/seed$seed/$task"
        # CoOp on 16 shots of each base class (tiny's logit scale needs lr 0.05 where CLIP's CoOp uses 2e-3).
        [ -f "$run/coop.safetensors" ] || cftool finetune --zs tiny --data "toy:$task" --classes base --shots 16 \
            --method coop --epochs 50 --lr 0.05 --seed "$seed" --no-prototypes -o "$run/coop.safetensors"
        # MergeTune: data and classes come from the prompt's metadata. Its own recipe (the default for a CoOp prompt:
        # 100 epochs, batch 128, SGD, one warm-up epoch, best-val), the lr scaled for tiny as CoOp's above...
        [ -f "$run/coop.mergetune.safetensors" ] || cftool continue "$run/coop.safetensors" --zs tiny --lr 0.05 \
            --no-prototypes
        # ...and CoOp's recipe, which the prompt records (the earlier study in RESULTS.md).
        [ -f "$run/coop.mergetune-coop-recipe.safetensors" ] || cftool continue "$run/coop.safetensors" --zs tiny \
            --inherit-recipe --no-prototypes -o "$run/coop.mergetune-coop-recipe.safetensors"
        # The ensemble baseline: zero-shot and CoOp text features mixed at the α best on the base training images.
        if [ ! -f "$run/ensemble.safetensors" ]; then
            alpha=$(cftool eval --path zs "$run/coop.safetensors" --data "toy:$task" --classes base --split train \
                --json | best_alpha)
            cftool interpolate zs "$run/coop.safetensors" --alpha "$alpha" -o "$run/ensemble.safetensors"
        fi
    done
done

spec=$(printf -- '--data toy:%s ' $tasks)
# shellcheck disable=SC2086  # one --data flag per task
cftool eval zs "$out/seed{seed}/{task}/coop.safetensors" "$out/seed{seed}/{task}/coop.mergetune.safetensors" \
    "$out/seed{seed}/{task}/coop.mergetune-coop-recipe.safetensors" "$out/seed{seed}/{task}/ensemble.safetensors" $spec --classes base,novel --zs tiny -o "$out/table.json" --force
echo "checkpoints in $out, the table as JSON in $out/table.json"
