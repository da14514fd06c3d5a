#compdef cftool
# cftool shell completion, generated from the CLI by `make completions`; do not edit.
_cftool() {
    local -a commands
    commands=(
        'finetune:Fine-tune a zero-shot model on a task; writes the checkpoint and, beside it,...'
        'continue:MergeTune continue training a fine-tuned checkpoint towards the zero-shot...'
        'delta:Task vector θ_t − θ_0 of a fine-tuned checkpoint (and apply, to go back).'
        'unify:Unify task deltas into one delta plus per-task triggers (ConDU, TIES, DARE, …).'
        'decouple:Rebuild a task expert from a unified delta and its trigger.'
        'route:Predict with task experts chosen per image by prototype similarity.'
        'eval:Top-1 accuracy per task of a zero-shot model or of checkpoints.'
        'inspect:Describe checkpoint files kind, base, task, tensors, parameters, dtypes, size.'
        'import:Convert a foreign checkpoint into a cftool file (kind model or prompt).'
        'export:Write a plain open_clip state dict (.safetensors/.pt/.bin), or with --zs...'
    )
    if (( CURRENT == 2 )); then
        _describe 'command' commands
        return
    fi
    shift words
    (( CURRENT-- ))
    case $words[1] in
        finetune) _arguments '--zs[Base model tiny, ViT-B/16, NAMETAG, hf-hubORG/NAME or a file.]:value:_files' '--data[Training task toyTASK, folderPATH or coopNAME.]:value:_files' '-o[Checkpoint to write (prototypes go beside it).]:value:_files' '--output[Checkpoint to write (prototypes go beside it).]:value:_files' '--method[coop, head, lora, full.]:value:_files' '--classes[Train on all classes, or the base/novel half.]:value:_files' '--shots[Training images per class (few-shot).]:value:_files' '--iterations[Optimiser steps.]:value:_files' '--epochs[Passes over the training images.]:value:_files' '--batch-size[Images per forward pass.]:value:_files' '--lr[Peak learning rate (default per method).]:value:_files' '--optimizer[sgd or adamw (default per method).]:value:_files' '--weight-decay[Weight decay.]:value:_files' '--warmup[Linear warm-up steps before cosine decay.]:value:_files' '--label-smoothing[Label smoothing in 0, 1).]:value:_files' '--precision[auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16.]:value:_files' '--n-ctx[coop context vectors (default 4).]:value:_files' '--ctx-init[coop words the context starts from, or random.]:value:_files' '--rank[lora rank (default 8).]:value:_files' '--alpha[lora scale alpha/rank (default alpha 16).]:value:_files' '--towers[lora, full towers to train, image, text or image,text (default).]:value:_files' '--feature-cache[Frozen image tower encode images once.]' '--no-feature-cache[Frozen image tower encode images once.]' '--cache-dir[Keep cached image features in this folder across runs.]:value:_files' '--checkpoint-every[Save trainer state every N steps (always on Ctrl-C).]:value:_files' '--resume[Continue from the trainer state beside the output.]' '--eval[Also report test accuracy of the result.]' '--data-root[Folder holding real datasets (CoOp layout, MTIL folders).]:value:_files' '--workers[Data-loading worker processes.]:value:_files' '--device[auto, cpu, cuda or cudaN.]:value:_files' '--seed[Random seed; the same seed gives the same result.]:value:_files' '--force[Overwrite an existing output file.]' '--json[Machine-readable JSON on stdout (tables go to stderr).]' '--config[YAML file whose keys are this commands options (flags given on the command line win).]:value:_files' '--help[Show this message and exit.]' '*:file:_files' ;;
        continue) _arguments '*:file:_files' ;;
        delta) _arguments '*:file:_files' ;;
        unify) _arguments '*:file:_files' ;;
        decouple) _arguments '*:file:_files' ;;
        route) _arguments '*:file:_files' ;;
        eval) _arguments '--zs[Base model tiny, ViT-B/16, NAMETAG, hf-hubORG/NAME or a file.]:value:_files' '--data[Task to evaluate on toyTASK, folderPATH or coopNAME (repeatable).]:value:_files' '--benchmark[mtil-tiny, base2new-tiny, or mtil (needs --data-root).]:value:_files' '--classes[Class subset of --data tasks all, base or novel.]:value:_files' '--split[Split to evaluate on.]:value:_files' '--data-root[Folder holding real datasets (CoOp layout, MTIL folders).]:value:_files' '-o[Also write the JSON report to this file.]:value:_files' '--output[Also write the JSON report to this file.]:value:_files' '--force[Overwrite an existing output file.]' '--batch-size[Images per forward pass.]:value:_files' '--workers[Data-loading worker processes.]:value:_files' '--device[auto, cpu, cuda or cudaN.]:value:_files' '--seed[Random seed; the same seed gives the same result.]:value:_files' '--json[Machine-readable JSON on stdout (tables go to stderr).]' '--config[YAML file whose keys are this commands options (flags given on the command line win).]:value:_files' '--help[Show this message and exit.]' '*:file:_files' ;;
        inspect) _arguments '--check[Also scan every tensor for NaN and Inf.]' '--json[Machine-readable JSON on stdout (tables go to stderr).]' '--config[YAML file whose keys are this commands options (flags given on the command line win).]:value:_files' '--help[Show this message and exit.]' '*:file:_files' ;;
        import) _arguments '-o[File to write (never overwritten without --force).]:value:_files' '--output[File to write (never overwritten without --force).]:value:_files' '--zs[Base model tiny, ViT-B/16, NAMETAG, hf-hubORG/NAME or a cftool model file.]:value:_files' '--format[auto, open_clip (full state dict) or coop (Dassl prompt learner).]:value:_files' '--task[Task name to record in the metadata.]:value:_files' '--force[Overwrite an existing output file.]' '--device[auto, cpu, cuda or cudaN.]:value:_files' '--config[YAML file whose keys are this commands options (flags given on the command line win).]:value:_files' '--help[Show this message and exit.]' '*:file:_files' ;;
        export) _arguments '-o[File to write (never overwritten without --force).]:value:_files' '--output[File to write (never overwritten without --force).]:value:_files' '--zs[Base model tiny, ViT-B/16, NAMETAG, hf-hubORG/NAME or a cftool model file.]:value:_files' '--force[Overwrite an existing output file.]' '--config[YAML file whose keys are this commands options (flags given on the command line win).]:value:_files' '--help[Show this message and exit.]' '*:file:_files' ;;
    esac
}
_cftool "$@"
