#!/usr/bin/env bash
# ConDU's continual protocol on mtil-tiny: the 11 toy tasks learned one after another in MTIL's order, against the
# baselines on the same recipe, ending with one table of Transfer, Average and Last (ConDU paper, Table 1 layout).
#
#   examples/condu_mtil_tiny.sh [OPTIONS] [OUT]
#     --method full|lora    what each session fine-tunes (default full: both towers)
#     --towers T            which towers fine-tuning trains: image,text (default) or text
#     --few-shot N          N training images per class (MTIL's few-shot variant uses 5)
#     --task-agnostic       no task id: every cell of ConDU's sessions is answered by routing
#     --label-space union   with --task-agnostic: classify among every task's classes, not each task's own
#     --train-templates T   first (ZSCL's training head, one prompt per class) or all (default)
#     --condu-lora          with --method lora: ConDU's LoRA (MLP only, rank 64, both factors drawn, scale 1/sqrt(r))
#                           merged in factor space (unify --method condu-lora), as the reference does
#   TASKS="aircraft caltech101 cifar100" ITERATIONS=20 examples/condu_mtil_tiny.sh /tmp/mtil   # a smaller run
#
# Methods, each a sequence of one checkpoint per session (session t has learned the first t tasks):
#   zero-shot     tiny itself;
#   individual    one fine-tune of tiny per task (the upper bound; a column, not a sequence);
#   sequential    each task fine-tuned starting from the previous session's model;
#   task-arith    continual task arithmetic: the running mean of the individual deltas;
#   ConDU         `unify --into` the previous session's unified set with the new task's delta.
# About 50 minutes on one core of a 2-core CPU beside another job (30 with --towers text; 2026-12-06, the ViT tiny);
# every file already in OUT is reused.
set -euo pipefail
method=full towers=image,text shots="" agnostic="" space=own templates=all condu_lora=""
while [ $# -gt 0 ]; do
    case $1 in
        --method) method=$2; shift 2 ;;
        --towers) towers=$2; shift 2 ;;
        --few-shot) shots=$2; shift 2 ;;
        --task-agnostic) agnostic=--task-agnostic; shift ;;
        --label-space) space=$2; shift 2 ;;
        --train-templates) templates=$2; shift 2 ;;
        --condu-lora) condu_lora=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        -*) echo "condu_mtil_tiny.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
case $method in full|lora) ;; *) echo "condu_mtil_tiny.sh: --method is full or lora, not $method" >&2; exit 2 ;; esac
if [ -n "$condu_lora" ] && [ "$method" != lora ]; then echo "condu_mtil_tiny.sh: --condu-lora needs --method lora" >&2; exit 2; fi
out=${1:-runs/condu-mtil-$method${condu_lora:+-condu}${shots:+-${shots}shot}$([ "$towers" = image,text ] || echo "-$towers")}
mtil_order="aircraft caltech101 cifar100 dtd eurosat flowers food mnist oxfordpet cars sun397"
tasks=(${TASKS:-$mtil_order})
iterations=${ITERATIONS:-150}
lr=${LR:-1e-4}
seed=${SEED:-0}
export COLUMNS=${COLUMNS:-220}   # the final table is wide; keep it unwrapped when written to a file
# The testbed's recipe: short, on all of a task's images (or N shots), and it still forgets (RESULTS.md).
recipe=(--method "$method" --towers "$towers" --iterations "$iterations" --lr "$lr" --batch-size 32 --seed "$seed"
    --train-templates "$templates")
[ -n "$condu_lora" ] && recipe+=(--lora-targets mlp --lora-init condu --rank 64 --alpha 8)
[ -n "$shots" ] && recipe+=(--shots "$shots")
mkdir -p "$out"/{individual,deltas,condu,sequential,task-arith}

previous=""
for t in "${!tasks[@]}"; do
    task=${tasks[t]} session=$((t + 1))
    echo "== session $session: $task"
    # Individual fine-tune of the base (also ConDU's first step, and the prototypes that routing reads).
    ft="$out/individual/$task.safetensors"
    [ -f "$ft" ] || cftool finetune --zs tiny --data "toy:$task" "${recipe[@]}" -o "$ft"
    [ -f "$out/deltas/$task.safetensors" ] || cftool delta "$ft" --zs tiny -o "$out/deltas/$task.safetensors"

    # ConDU: decouple the experts held so far, add the new delta, unify again (no old delta is kept).
    condu="$out/condu/session$session.st"
    if [ ! -f "$condu" ]; then
        # ConDU's LoRA merges the LoRA factors themselves; otherwise the weight deltas are merged.
        merge=(--method condu "$out/deltas/$task.safetensors")
        [ -n "$condu_lora" ] && merge=(--method condu-lora "$ft")
        if [ "$session" = 1 ]; then
            cftool unify "${merge[@]}" -o "$condu"
        else
            cftool unify --into "$out/condu/session$t.st" "${merge[@]}" -o "$condu"
        fi
    fi

    # Continual task arithmetic: the mean of the deltas learned so far.
    mean="$out/task-arith/session$session.safetensors"
    deltas=()
    for learned in "${tasks[@]:0:session}"; do deltas+=("$out/deltas/$learned.safetensors"); done
    [ -f "$mean" ] || cftool unify --method mean "${deltas[@]}" -o "$mean"

    # Sequential fine-tuning: the same recipe, starting from the previous session's model.
    sequential="$out/sequential/session$session.safetensors"
    if [ ! -f "$sequential" ]; then
        if [ "$session" = 1 ]; then
            cftool delta apply "$out/deltas/$task.safetensors" --zs tiny -o "$sequential"   # = the individual model
        elif [ "$method" = full ]; then
            cftool finetune --zs "$previous" --data "toy:$task" "${recipe[@]}" -o "$sequential"
        else   # a LoRA trained on the previous model, merged into it, is the session's model
            cftool finetune --zs "$previous" --data "toy:$task" "${recipe[@]}" -o "$out/sequential/lora$session.safetensors"
            cftool delta "$out/sequential/lora$session.safetensors" --zs "$previous" -o "$out/sequential/delta$session.safetensors"
            cftool delta apply "$out/sequential/delta$session.safetensors" --zs "$previous" -o "$sequential"
        fi
    fi
    previous=$sequential
done

last=${#tasks[@]}
# The last session's experts as models, and its task-agnostic answer on the first task's images (top-1 routing).
[ -d "$out/experts" ] || cftool decouple "$out/condu/session$last.st" --all --as model --zs tiny -o "$out/experts"
cftool route "$out/condu/session$last.st" --zs tiny --prototypes "$out/individual/*.prototypes.safetensors" \
    --data "toy:${tasks[0]}" --top-k 1

# The table's columns are the tasks in training order: MTIL's is the benchmark's, any other is spelled out.
if [ "${tasks[*]}" = "$mtil_order" ]; then data=(--benchmark mtil-tiny); else data=(); for task in "${tasks[@]}"; do data+=(--data "toy:$task"); done; fi
report=mtil${agnostic:+-agnostic}$([ "$space" = own ] || echo "-$space")
cftool eval zs "individual=$out/individual/{task}.safetensors" "${data[@]}" --zs tiny \
    --sessions "sequential=$out/sequential/session{t}.safetensors" \
    --sessions "task-arith=$out/task-arith/session{t}.safetensors" \
    --sessions "ConDU=$out/condu/session{t}.st" --prototypes "$out/individual/*.prototypes.safetensors" $agnostic \
    --label-space "$space" --cache-dir "$out/cells" --heatmap "$out/$report.png" --force -o "$out/$report.json"
echo "checkpoints in $out, the table as JSON in $out/$report.json"
