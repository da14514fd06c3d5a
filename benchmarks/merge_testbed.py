"""The merging table on the testbed: one full fine-tune of `tiny` per mtil-tiny task, then, per task, the test
top-1 of the individual model, of its decoupled ConDU expert, and of the task-arithmetic, TIES and mean merges of
all eleven deltas (plus zero-shot, for reference).

Every step is a cftool command, run in this process through ``cftool.cli.main`` exactly as typed in a shell:

    cftool finetune --zs tiny --data toy:TASK --method full --iterations 150 --lr 1e-4 --batch-size 32 --seed 0 \\
        -o OUT/finetuned/TASK.safetensors                                  # 11 times
    cftool delta OUT/finetuned/TASK.safetensors -o OUT/deltas/TASK.safetensors
    cftool unify OUT/deltas/*.safetensors -o OUT/unified.st
    cftool decouple OUT/unified.st --all --as model -o OUT/experts
    cftool unify OUT/deltas/*.safetensors --method M [--lambda L] -o OUT/merged/NAME.safetensors
    cftool delta apply OUT/merged/NAME.safetensors -o OUT/merged/NAME.model.safetensors
    cftool eval MODEL --data toy:TASK / --benchmark mtil-tiny --json

Files already in OUT are reused, so an interrupted run continues where it stopped. The table (markdown) goes to
stdout and, with every number, to OUT/results.json.

``--diagnose`` adds where the ConDU experts lose accuracy: per task, the expert's delta in one tower and the
individual delta in the other (image tower = ``visual.*``), the expert with one rescaler per tower instead of
one per task, the expert with the individual model's BatchNorm parameters, and how far each tower's expert
delta is from the task's own (relative L2 error, cosine).

    .venv/bin/python benchmarks/merge_testbed.py --out merge-testbed      # about 30 minutes on the 2-core CPU
    .venv/bin/python benchmarks/merge_testbed.py --out merge-testbed --diagnose
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

from cftool.cli import main as cftool

# name -> unify options; task arithmetic at the usual λ = 0.3 and a small sweep around it (chosen on test data:
# the toy tasks have no validation split, so the sweep shows sensitivity, not a tuned result).
MERGES = {
    "task-arithmetic": ["--method", "task-arithmetic", "--lambda", "0.3"],
    "ties": ["--method", "ties"],
    "mean": ["--method", "mean"],
    "task-arithmetic-0.1": ["--method", "task-arithmetic", "--lambda", "0.1"],
    "task-arithmetic-0.5": ["--method", "task-arithmetic", "--lambda", "0.5"],
    "task-arithmetic-1.0": ["--method", "task-arithmetic", "--lambda", "1.0"],
}


def run(*args: object) -> str:
    """``cftool ARGS`` in this process; its stdout (the --json output) is returned."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = cftool([str(arg) for arg in args])
    if code:
        raise SystemExit(f"`cftool {' '.join(map(str, args))}` failed with exit code {code}")
    return captured.getvalue()


class Evaluations:
    """task -> top-1 of one model, from `cftool eval ... --json`; remembered in a JSON file across runs, since the
    models in OUT do not change."""

    def __init__(self, file: Path):
        self.file = file
        self.known: dict[str, dict[str, float]] = json.loads(file.read_text()) if file.exists() else {}

    def __call__(self, *args: object) -> dict[str, float]:
        key = " ".join(map(str, args))
        if key not in self.known:
            [model] = json.loads(run("eval", *args, "--json"))["models"]
            self.known[key] = {result["task"]: result["accuracy"] for result in model["results"]}
            self.file.write_text(json.dumps(self.known, indent=1) + "\n")
        return self.known[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("merge-testbed"))
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--towers", default="image,text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diagnose", action="store_true", help="also locate the ConDU experts' losses")
    args = parser.parse_args()

    from cftool.data import get_benchmark

    tasks = [spec.source.removeprefix("toy:") for spec in get_benchmark("mtil-tiny").tasks]
    out = args.out
    for task in tasks:
        finetuned = out / "finetuned" / f"{task}.safetensors"
        if not finetuned.exists():
            recipe = ["--method", "full", "--towers", args.towers, "--iterations", args.iterations, "--lr", args.lr]
            recipe += ["--batch-size", args.batch_size, "--seed", args.seed]
            run("finetune", "--zs", "tiny", "--data", f"toy:{task}", *recipe, "-o", finetuned)
        delta = out / "deltas" / f"{task}.safetensors"
        if not delta.exists():
            run("delta", finetuned, "-o", delta)
    deltas = [out / "deltas" / f"{task}.safetensors" for task in tasks]
    unified = out / "unified.st"
    if not unified.exists():
        run("unify", *deltas, "-o", unified)
    if not all((out / "experts" / f"{task}.safetensors").exists() for task in tasks):
        run("decouple", unified, "--all", "--as", "model", "-o", out / "experts", "--force")
    for name, options in MERGES.items():
        merged, model = out / "merged" / f"{name}.safetensors", out / "merged" / f"{name}.model.safetensors"
        if not model.exists():
            run("unify", *deltas, *options, "-o", merged, "--force")
            run("delta", "apply", merged, "-o", model, "--force")

    accuracies = Evaluations(out / "evals.json")
    table = {"zero-shot": accuracies("--zs", "tiny", "--benchmark", "mtil-tiny")}
    for column, folder in (("individual", "finetuned"), ("condu expert", "experts")):
        table[column] = {t: accuracies(out / folder / f"{t}.safetensors", "--data", f"toy:{t}")[t] for t in tasks}
    for name in MERGES:
        table[name] = accuracies(out / "merged" / f"{name}.model.safetensors", "--benchmark", "mtil-tiny")
    inspect = json.loads(run("inspect", unified, "--json"))[0]["tasks"]

    results = {
        "recipe": {k: v for k, v in vars(args).items() if k != "out"},
        "tasks": tasks,
        "top1": table,
        "condu": {t["task"]: {"rescaler": t["rescaler"], "mask_density": t["mask_density"]} for t in inspect},
    }
    if args.diagnose:
        diagnosis = diagnose(out, tasks, unified, accuracies)
        results["diagnosis"] = diagnosis
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(tasks, table))
    if args.diagnose:
        print()
        print(markdown(tasks, {k: v for k, v in diagnosis.items() if k != "distance"}))
        print()
        print(distance_markdown(tasks, diagnosis["distance"]))


def _tower(name: str) -> str:
    return "image" if name.startswith("visual.") else "text"


def _batchnorm(name: str) -> bool:
    """The affine parameters and running statistics of the ResNet image tower's BatchNorm layers."""
    module = name.rsplit(".", 1)[0]
    is_norm = module.rsplit(".", 1)[-1].startswith("bn") or module.endswith("downsample.1")
    return name.startswith("visual.") and is_norm


def diagnose(out: Path, tasks: list[str], unified: Path, accuracies: Evaluations) -> dict:
    """Hybrids of each task's expert and individual delta, per tower, and per-tower rescalers."""
    import torch

    from cftool.io.checkpoint import open_checkpoint, save_checkpoint
    from cftool.io.unified import open_unified

    folder = out / "diagnosis"
    if not all((folder / "expert-deltas" / f"{task}.safetensors").exists() for task in tasks):
        run("decouple", unified, "--all", "-o", folder / "expert-deltas", "--force")
    variants = (
        "expert image, individual text",
        "individual image, expert text",
        "expert, a rescaler per tower",
        "expert, individual BatchNorm",
    )
    table: dict[str, dict] = {variant: {} for variant in variants}
    table["distance"] = {}
    with open_unified(unified) as unified_set:
        for index, task in enumerate(tasks):
            with open_checkpoint(out / "deltas" / f"{task}.safetensors") as own_file:
                own, header = own_file.load_all(), own_file.header
            with open_checkpoint(folder / "expert-deltas" / f"{task}.safetensors") as expert_file:
                expert = expert_file.load_all()
            rescaler = float(unified_set.rescalers[index])
            # λ_tower = Σ_tower mean|δ| / Σ_tower mean|M ⊙ u|, where M ⊙ u = expert / λ
            sums = {tower: [0.0, 0.0] for tower in ("image", "text")}
            for name, delta in own.items():
                sums[_tower(name)][0] += float(delta.abs().double().mean())
                sums[_tower(name)][1] += float((expert[name] / rescaler).abs().double().mean())
            per_tower = {tower: a / b if b else 0.0 for tower, (a, b) in sums.items()}
            mixes = {
                variants[0]: {n: expert[n] if _tower(n) == "image" else own[n] for n in own},
                variants[1]: {n: own[n] if _tower(n) == "image" else expert[n] for n in own},
                variants[2]: {n: expert[n] / rescaler * per_tower[_tower(n)] for n in own},
                variants[3]: {n: own[n] if _batchnorm(n) else expert[n] for n in own},
            }
            for variant, tensors in mixes.items():
                slug = variant.replace(" ", "-").replace(",", "")
                delta_path = folder / slug / f"{task}.safetensors"
                model_path = folder / slug / f"{task}.model.safetensors"
                if not model_path.exists():
                    save_checkpoint(delta_path, tensors, header, overwrite=True)
                    run("delta", "apply", delta_path, "-o", model_path, "--force")
                table[variant][task] = accuracies(model_path, "--data", f"toy:{task}")[task]
            distance = {"rescaler": rescaler, "rescaler per tower": per_tower}
            for tower in ("image", "text"):
                names = [n for n in own if _tower(n) == tower]
                a = torch.cat([own[n].reshape(-1) for n in names])
                b = torch.cat([expert[n].reshape(-1) for n in names])
                distance[tower] = {
                    "relative_l2_error": float((b - a).norm() / a.norm()),
                    "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
                }
            table["distance"][task] = distance
    return table


def distance_markdown(tasks: list[str], distance: dict) -> str:
    lines = [
        "| task | λ | λ image | λ text | image: rel. L2 error, cosine | text: rel. L2 error, cosine |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task in tasks:
        d = distance[task]
        towers = [f"{d[t]['relative_l2_error']:.2f}, {d[t]['cosine']:.2f}" for t in ("image", "text")]
        per_tower = d["rescaler per tower"]
        rescalers = f"{d['rescaler']:.3f} | {per_tower['image']:.3f} | {per_tower['text']:.3f}"
        lines.append(f"| {task} | {rescalers} | " + " | ".join(towers) + " |")
    return "\n".join(lines)


def markdown(tasks: list[str], table: dict[str, dict[str, float]]) -> str:
    columns = list(table)
    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(f"{table[c][task]:.1f}" for c in columns) + " |")
    means = [sum(table[c][t] for t in tasks) / len(tasks) for c in columns]
    lines.append("| **mean** | " + " | ".join(f"**{m:.1f}**" for m in means) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
