# cftool shell completion, generated from the CLI by `make completions`; do not edit.
_cftool() {
    local cur=${COMP_WORDS[COMP_CWORD]} opts=""
    if [[ $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W "finetune continue delta unify decouple route eval interpolate inspect import export recipes --help --version" -- "$cur"))
        return
    fi
    case "${COMP_WORDS[1]}" in
        finetune) opts='--zs --data -o --output --method --classes --shots --iterations --epochs --batch-size --lr --optimizer --weight-decay --warmup --schedule --warmup-epochs --warmup-lr --drop-last --no-drop-last --select --val-images --label-smoothing --precision --augment --n-ctx --ctx-init --rank --alpha --lora-targets --lora-init --towers --train-templates --feature-cache --no-feature-cache --cache-dir --checkpoint-every --resume --eval --log-every --data-root --workers --device --seed --force --json --quiet -q --config --recipe --help' ;;
        continue) opts='--zs -o --output --lambda-lmc --lambda-zs --zs-reg --zs-loss --lmc-samples --data --classes --shots --iterations --epochs --batch-size --lr --optimizer --weight-decay --warmup --schedule --warmup-epochs --warmup-lr --drop-last --no-drop-last --select --val-images --inherit-recipe --label-smoothing --precision --augment --seed --feature-cache --no-feature-cache --cache-dir --checkpoint-every --resume --eval --log-every --data-root --workers --device --force --json --quiet -q --config --recipe --help' ;;
        delta) opts='-o --output --zs --dtype --scale --force --json --quiet -q --config --help' ;;
        unify) opts='-o --output --method --into --replace --keep --trim --lambda --p --seed --force --json --format --quiet -q --config --help' ;;
        decouple) opts='-o --output --task --all --as --zs --force --json --quiet -q --config --help' ;;
        route) opts='--data --zs --prototypes --top-k --task --zero-shot --no-zero-shot --split -o --output --data-root --force --batch-size --workers --device --seed --json --format --quiet -q --config --help' ;;
        eval) opts='--zs --data --benchmark --classes --path --steps --plot --sessions --task-agnostic --label-space --prototypes --top-k --cache-dir --heatmap --split --log-every --data-root -o --output --force --batch-size --workers --device --seed --json --format --quiet -q --config --help' ;;
        interpolate) opts='--alpha -o --output --zs --device --force --quiet -q --config --help' ;;
        inspect) opts='--check --json --format --quiet -q --config --help' ;;
        import) opts='-o --output --zs --format --task --prototypes-dir --dtype --lora-base --force --device --quiet -q --config --help' ;;
        export) opts='-o --output --zs --dtype --force --quiet -q --config --help' ;;
        recipes) opts='--quiet -q --help' ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -o filenames -F _cftool cftool
