"""The fine-tuning bars on the toy testbed, measured with `tiny` (results go to benchmarks/RESULTS.md).

1. every method raises test accuracy on one task above zero-shot;
2. `full` on that task lowers the mean zero-shot accuracy on the other ten (forgetting);
3. `coop` 16-shot on base classes raises base and lowers novel accuracy on the tasks of `base2new-tiny`.

    .venv/bin/python benchmarks/finetune_bars.py --task food --threads 2 --out /tmp/bars
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from cftool.data import BENCHMARKS, DatasetSpec, load_task
from cftool.encode.zero_shot import evaluate_base2new, evaluate_zero_shot
from cftool.io.checkpoint import open_checkpoint
from cftool.kinds.apply import apply_checkpoint
from cftool.metrics import harmonic_mean
from cftool.train import FinetuneJob, TrainOptions, finetune
from cftool.zoo import load_model

# One recipe per method: few-shot like the papers' protocols, short enough for a 2-core CPU. CoOp's SGD lr of 2e-3
# was tuned for CLIP's logit scale of 100; tiny's is 21.6, so its gradients are about 5x smaller and the lr larger.
RECIPES = {
    "coop": ({}, TrainOptions(epochs=50, batch_size=32, lr=5e-2, optimizer="sgd")),
    "head": ({}, TrainOptions(epochs=20, batch_size=32, lr=1e-2, optimizer="adamw")),
    "lora": (
        {"rank": 8, "alpha": 16.0, "towers": ("image", "text")},
        TrainOptions(epochs=5, batch_size=32, lr=1e-3, optimizer="adamw"),
    ),
    "full": ({"towers": ("image", "text")}, TrainOptions(epochs=5, batch_size=32, lr=1e-4, optimizer="adamw")),
}


def run(zs: str, method: str, data: DatasetSpec, seed: int, output: Path) -> tuple[float | None, float]:
    method_options, options = RECIPES[method]
    options = replace(options, seed=seed)
    began = time.perf_counter()
    job = FinetuneJob(zs, data, method, output, options, method_options, force=True, evaluate=True)
    result = finetune(job)
    return result.test_accuracy, time.perf_counter() - began


def base_to_novel(zs: str, tasks: dict, shots: int, seeds: list[int], ctx_init: str, out: Path) -> dict:
    """CoOp on each base2new-tiny task's base classes, ``shots`` per class, averaged over ``seeds`` (CoOp's
    protocol averages three): base and novel accuracy before and after."""
    zoo = load_model(zs)
    method_options, options = RECIPES["coop"]
    rows = {}
    for spec in BENCHMARKS["base2new-tiny"].tasks:
        task = tasks[spec.source]
        [before] = evaluate_base2new(zoo, [task])
        after = []
        for seed in seeds:
            output = out / f"coop-base-{task.name}-seed{seed}.safetensors"
            data = DatasetSpec(spec.source, classes="base", shots=shots, seed=seed)
            train_options = replace(options, seed=seed)
            coop_options = {**method_options, "ctx_init": ctx_init}
            finetune(FinetuneJob(zs, data, "coop", output, train_options, coop_options, force=True))
            with open_checkpoint(output, kind="prompt") as ckpt:
                after.extend(evaluate_base2new(zoo, [task], head=apply_checkpoint(zoo, ckpt)))
        base, novel = (statistics.mean(getattr(result, half) for result in after) for half in ("base", "novel"))
        rows[task.name] = {
            "zero_shot": asdict(before),
            "coop": [asdict(result) for result in after],
            "coop_mean": {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)},
        }
        print(f"{task.name}: base {before.base:.1f} -> {base:.1f}, novel {before.novel:.1f} -> {novel:.1f}", flush=True)
    raised = sum(row["coop_mean"]["base"] > row["zero_shot"]["base"] for row in rows.values())
    lowered = sum(row["coop_mean"]["novel"] < row["zero_shot"]["novel"] for row in rows.values())
    means = {
        f"{half}_{when}": statistics.mean(row[key][half] for row in rows.values())
        for half in ("base", "novel")
        for when, key in (("zero_shot", "zero_shot"), ("coop", "coop_mean"))
    }
    print(
        f"coop raised base on {raised} of {len(rows)} tasks (mean {means['base_zero_shot']:.1f} -> "
        f"{means['base_coop']:.1f}) and lowered novel on {lowered} (mean {means['novel_zero_shot']:.1f} -> "
        f"{means['novel_coop']:.1f})"
    )
    return {
        "ctx_init": ctx_init,
        "seeds": seeds,
        "tasks": rows,
        "raised_base": raised,
        "lowered_novel": lowered,
        **means,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zs", default="tiny", help="base model")
    parser.add_argument("--task", default="food", help="toy task the methods are trained on")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bars-out"))
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: methods, forgetting, base2new")
    parser.add_argument("--ctx-init", default="a photo of a", help="coop context initialisation for base2new")
    parser.add_argument(
        "--base2new-seeds",
        type=lambda text: [int(seed) for seed in text.split(",")],
        default=[0, 1, 2],
        help="comma-separated few-shot and training seeds that base2new averages over",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"zs": args.zs, "task": args.task, "shots": args.shots, "seed": args.seed, "threads": args.threads}

    zoo = load_model(args.zs)
    tasks = {spec.source: load_task(spec) for spec in BENCHMARKS["mtil-tiny"].tasks}
    zero_shot = {result.task: result.accuracy for result in evaluate_zero_shot(zoo, list(tasks.values()))}
    report["zero_shot"] = zero_shot
    data = DatasetSpec(f"toy:{args.task}", shots=args.shots, seed=args.seed)

    if "methods" not in skip:
        report["methods"] = {}
        for method in RECIPES:
            accuracy, seconds = run(args.zs, method, data, args.seed, args.out / f"{method}.safetensors")
            report["methods"][method] = {"test_accuracy": accuracy, "seconds": round(seconds, 1)}
            print(f"{method}: {zero_shot[args.task]:.1f} -> {accuracy:.1f} ({seconds:.0f} s)", flush=True)

    if "forgetting" not in skip:
        full = args.out / "full.safetensors"
        if not full.exists():
            run(args.zs, "full", data, args.seed, full)
        with open_checkpoint(full, kind="model") as ckpt:
            apply_checkpoint(zoo, ckpt)
        others = [task for source, task in tasks.items() if source != f"toy:{args.task}"]
        after = {result.task: result.accuracy for result in evaluate_zero_shot(zoo, others)}
        before_mean = sum(zero_shot[name] for name in after) / len(after)
        after_mean = sum(after.values()) / len(after)
        report["forgetting"] = {"other_tasks_after_full": after, "mean_before": before_mean, "mean_after": after_mean}
        print(f"forgetting: mean zero-shot on the other {len(after)} tasks {before_mean:.1f} -> {after_mean:.1f}")

    if "base2new" not in skip:
        report["base2new"] = base_to_novel(args.zs, tasks, args.shots, args.base2new_seeds, args.ctx_init, args.out)

    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
