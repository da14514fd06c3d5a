"""The fine-tuning bars on the toy testbed, measured with `tiny` (results go to benchmarks/RESULTS.md).

1. every method raises test accuracy on one task above zero-shot;
2. `full` on that task lowers the mean zero-shot accuracy on the other ten (forgetting);
3. `coop` 16-shot on base classes raises base and lowers novel accuracy on the tasks of `base2new-tiny`.

    .venv/bin/python benchmarks/finetune_bars.py --task dtd --threads 2 --out /tmp/bars
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cftool.data import BENCHMARKS, DatasetSpec, load_task
from cftool.evaluate import evaluate_base2new, evaluate_zero_shot
from cftool.io.checkpoint import open_checkpoint
from cftool.train import FinetuneJob, TrainOptions, finetune, load_for_eval
from cftool.zoo import load_model

# One recipe per method: few-shot like the papers' protocols, short enough for a 2-core CPU.
RECIPES = {
    "coop": ({}, TrainOptions(epochs=20, batch_size=32, lr=2e-3, optimizer="sgd")),
    "head": ({}, TrainOptions(epochs=20, batch_size=32, lr=1e-3, optimizer="adamw")),
    "lora": (
        {"rank": 8, "alpha": 16.0, "towers": ("image", "text")},
        TrainOptions(epochs=5, batch_size=32, lr=1e-3, optimizer="adamw"),
    ),
    "full": ({"towers": ("image", "text")}, TrainOptions(epochs=5, batch_size=32, lr=1e-4, optimizer="adamw")),
}


def run(zs: str, method: str, data: DatasetSpec, seed: int, output: Path) -> tuple[float | None, float]:
    method_options, options = RECIPES[method]
    options = TrainOptions(**{**options.to_dict(), "seed": seed})
    began = time.perf_counter()
    job = FinetuneJob(zs, data, method, output, options, method_options, force=True, evaluate=True)
    result = finetune(job)
    return result.test_accuracy, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zs", default="tiny", help="base model")
    parser.add_argument("--task", default="dtd", help="toy task the methods are trained on")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bars-out"))
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: methods, forgetting, base2new")
    parser.add_argument("--ctx-init", default="a photo of a", help="coop context initialisation for base2new")
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
            load_for_eval(zoo, ckpt)
        others = [task for source, task in tasks.items() if source != f"toy:{args.task}"]
        after = {result.task: result.accuracy for result in evaluate_zero_shot(zoo, others)}
        before_mean = sum(zero_shot[name] for name in after) / len(after)
        after_mean = sum(after.values()) / len(after)
        report["forgetting"] = {"other_tasks_after_full": after, "mean_before": before_mean, "mean_after": after_mean}
        print(f"forgetting: mean zero-shot on the other {len(after)} tasks {before_mean:.1f} -> {after_mean:.1f}")

    if "base2new" not in skip:
        zoo = load_model(args.zs)
        rows = {}
        for spec in BENCHMARKS["base2new-tiny"].tasks:
            task = tasks[spec.source]
            [before] = evaluate_base2new(zoo, [task])
            output = args.out / f"coop-base-{task.name}.safetensors"
            base_data = DatasetSpec(spec.source, classes="base", shots=args.shots, seed=args.seed)
            _, options = RECIPES["coop"]
            job = FinetuneJob(
                args.zs,
                base_data,
                "coop",
                output,
                TrainOptions(**{**options.to_dict(), "seed": args.seed}),
                {"ctx_init": args.ctx_init},
                force=True,
            )
            finetune(job)
            with open_checkpoint(output, kind="prompt") as ckpt:
                [after] = evaluate_base2new(zoo, [task], head=load_for_eval(zoo, ckpt))
            rows[task.name] = {"zero_shot": asdict(before), "coop": asdict(after)}
            print(
                f"{task.name}: base {before.base:.1f} -> {after.base:.1f}, novel {before.novel:.1f} -> "
                f"{after.novel:.1f}, HM {before.hm:.1f} -> {after.hm:.1f}",
                flush=True,
            )
        report["base2new"] = {"ctx_init": args.ctx_init, "tasks": rows}

    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
