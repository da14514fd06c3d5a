"""`continue` on the kinds other than prompts, on one mtil-tiny task: what fine-tuning learned, what it cost the
other ten tasks, and what continuing with MergeTune keeps and gives back.

For each kind (``model``: full fine-tuning of both towers; ``lora``: both towers; ``head``), the script fine-tunes
on all training images of ``--task``, then continues the checkpoint with each ``--lambda-zs`` value (the zero-shot
surrogate ``--zs-reg``, the path ``--lmc-samples``) for as many steps as fine-tuning took. It reports the task's
test accuracy and the mean zero-shot accuracy of the other ten tasks (a head leaves the encoders alone, so it has no
other tasks to forget) for the zero-shot model, the fine-tune and each continuation. ``OUT/bars.json`` holds it all.

    .venv/bin/python benchmarks/continue_bars.py --kinds model --task mnist --lambda-zs 0.01,0.1,1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from cftool.data import BENCHMARKS, DatasetSpec, load_task
from cftool.encode.zero_shot import evaluate_zero_shot
from cftool.io.checkpoint import open_checkpoint
from cftool.kinds.apply import apply_checkpoint
from cftool.train import FinetuneJob, TrainOptions, finetune
from cftool.train.continued import ContinueJob, continue_training
from cftool.train.objectives import MergeTuneOptions, parse_lmc_samples
from cftool.zoo import load_model

# Fine-tuning on all of a task's images: the recipes under which full fine-tuning forgets (README).
RECIPES = {
    "model": (
        "full",
        {"towers": ("image", "text")},
        TrainOptions(iterations=150, batch_size=32, lr=1e-4, optimizer="adamw"),
    ),
    "lora": (
        "lora",
        {"rank": 8, "alpha": 16.0, "towers": ("image", "text")},
        TrainOptions(iterations=150, batch_size=32, lr=1e-3, optimizer="adamw"),
    ),
    "head": ("head", {}, TrainOptions(iterations=150, batch_size=32, lr=1e-2, optimizer="adamw")),
}


def scores(zoo, checkpoint: Path | None, task: str, others: list, with_others: bool) -> dict:
    """Test accuracy on the task and the mean over the other tasks, with the checkpoint applied to the base."""
    state = {name: t.clone() for name, t in zoo.model.state_dict().items()}
    head = None
    if checkpoint is not None:
        with open_checkpoint(checkpoint) as ckpt:
            head = apply_checkpoint(zoo, ckpt)
    kwargs = {"head": head} if head is not None else {}
    [own] = evaluate_zero_shot(zoo, [load_task(DatasetSpec(f"toy:{task}"))], **kwargs)
    result = {"task": own.accuracy}
    if with_others:
        result["others"] = statistics.mean(r.accuracy for r in evaluate_zero_shot(zoo, others, **kwargs))
    zoo.load_state_dict(state, "base")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="model,lora,head")
    parser.add_argument("--task", default="mnist")
    parser.add_argument("--lambda-zs", default="0.01,0.1,1", help="comma-separated values to continue with")
    parser.add_argument("--lambda-lmc", type=float, default=1.0)
    parser.add_argument("--zs-reg", default="param")
    parser.add_argument("--lmc-samples", default="0.5,1.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("continue-bars"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    zoo = load_model("tiny")
    others = [load_task(spec) for spec in BENCHMARKS["mtil-tiny"].tasks if spec.source != f"toy:{args.task}"]
    report = {"task": args.task, "seed": args.seed, "lmc_samples": args.lmc_samples, "zs_reg": args.zs_reg, "kinds": {}}
    for kind in args.kinds.split(","):
        method, method_options, options = RECIPES[kind]
        with_others = kind != "head"
        rows = {"zero-shot": scores(zoo, None, args.task, others, with_others)}
        fine_tuned = args.out / f"{kind}-{args.task}.safetensors"
        began = time.perf_counter()
        options = TrainOptions(**{**options.to_dict(), "seed": args.seed})
        finetune(
            FinetuneJob(
                "tiny", DatasetSpec(f"toy:{args.task}"), method, fine_tuned, options, method_options, force=True
            )
        )
        rows["fine-tuned"] = {
            **scores(zoo, fine_tuned, args.task, others, with_others),
            "seconds": round(time.perf_counter() - began),
        }
        print(kind, "zero-shot", rows["zero-shot"], "fine-tuned", rows["fine-tuned"], flush=True)
        for lambda_zs in (float(v) for v in args.lambda_zs.split(",")):
            mergetune = MergeTuneOptions(args.lambda_lmc, lambda_zs, args.zs_reg, parse_lmc_samples(args.lmc_samples))
            output = args.out / f"{kind}-{args.task}.mergetune-{lambda_zs:g}.safetensors"
            began = time.perf_counter()
            continue_training(ContinueJob(fine_tuned, "tiny", mergetune, output, force=True))
            name = f"mergetune λ_zs={lambda_zs:g}"
            rows[name] = {
                **scores(zoo, output, args.task, others, with_others),
                "seconds": round(time.perf_counter() - began),
            }
            print(kind, name, rows[name], flush=True)
        report["kinds"][kind] = rows
        (args.out / "bars.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
