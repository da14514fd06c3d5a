"""Where ConDU's experts lose accuracy: each step of the rebuild ``δ̃_i = λ_i · M_i ⊙ u`` (docs/design.md §5.2)
applied to a
task's own delta alone, against sparsity that keeps the scale (DARE, a random mask of the mask's density), and the
experts' gap as the number of unified tasks grows.

Inputs are the deltas a study made (`examples/condu_mtil_tiny.sh` writes them to OUT/deltas); the unified sets are
made here with `cftool unify`. Per task, with ``M_i``, ``u`` and ``λ_i`` read from the unified set of all tasks:

    δ                   the individual model                0.5·δ            the scale alone
    M⊙δ                 the mask alone (sign conflicts dropped)
    λ·M⊙δ               the mask and the rescaler           λ·M⊙u            the expert (mask, max, rescaler)
    δ, λ·u on M         the max and rescaler without the drop
    DARE 0.9            90 % dropped at random, rescaled    random mask      the mask's density, no rescale

    .venv/bin/python benchmarks/condu_diagnosis.py --deltas runs/condu-mtil-full/deltas --out runs/diagnosis
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Subset

from cftool.cli import main as cftool
from cftool.data import load_task
from cftool.encode.zero_shot import encode_images, zero_shot_head
from cftool.io.checkpoint import open_checkpoint
from cftool.io.unified import open_unified
from cftool.merge.decouple import expert_tensors
from cftool.merge.delta import added_delta
from cftool.metrics import top1_accuracy
from cftool.zoo import load_model

MTIL_ORDER = "aircraft caltech101 cifar100 dtd eurosat flowers food mnist oxfordpet cars sun397".split()
Variant = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Generator], torch.Tensor]
# (δ, M, u, λ, generator) -> the delta to evaluate, per tensor
VARIANTS: dict[str, Variant] = {
    "δ": lambda d, m, u, lam, g: d,
    "0.5·δ": lambda d, m, u, lam, g: 0.5 * d,
    "M⊙δ": lambda d, m, u, lam, g: torch.where(m, d, 0),
    "λ·M⊙δ": lambda d, m, u, lam, g: lam * torch.where(m, d, 0),
    "λ·M⊙u (expert)": lambda d, m, u, lam, g: lam * torch.where(m, u, 0),
    "δ, λ·u on M": lambda d, m, u, lam, g: torch.where(m, lam * u, d),
    "DARE 0.9": lambda d, m, u, lam, g: torch.where(torch.rand(d.shape, generator=g) >= 0.9, d / 0.1, 0),
    "random mask": lambda d, m, u, lam, g: torch.where(torch.rand(d.shape, generator=g) < m.float().mean(), d, 0),
}


def run(*args: object) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # stdout is the report's
        code = cftool([str(arg) for arg in args])
    if code:
        raise SystemExit(f"`cftool {' '.join(map(str, args))}` failed with exit code {code}")


class Evaluator:
    """Test top-1 of ``tiny + delta`` on a toy task, the base restored after each."""

    def __init__(self, test_images: int | None = None) -> None:
        self.zoo = load_model("tiny")
        self.test_images = test_images
        self.base = {name: t.clone() for name, t in self.zoo.model.state_dict().items()}

    def __call__(self, delta: dict[str, torch.Tensor], task_name: str) -> float:
        task = load_task(f"toy:{task_name}")
        self.zoo.load_state_dict(added_delta(self.base, delta.items()), "variant")
        try:
            images = task.split("test", self.zoo.preprocess)
            if self.test_images is not None:
                images = Subset(images, range(min(self.test_images, len(images))))
            features, labels = encode_images(self.zoo, images, 256, 0)
            return top1_accuracy(features @ zero_shot_head(self.zoo, task.classnames, task.templates), labels)
        finally:
            self.zoo.load_state_dict(self.base, "tiny")


def variants(deltas: dict[str, Path], unified_path: Path, evaluate: Evaluator, seed: int) -> dict[str, dict]:
    table: dict[str, dict[str, float]] = {name: {} for name in VARIANTS}
    with open_unified(unified_path) as unified:
        for index, task in enumerate(unified.task_names):
            with open_checkpoint(deltas[task], kind="delta") as ckpt:
                own = ckpt.load_all()
            parts = {}
            for name, info in unified.delta.items():
                rows = info.shape[0] if info.shape else 1
                parts[name] = (unified.unified_rows(name, 0, rows), unified.mask_rows(index, name, 0, rows))
            lam = float(unified.rescalers[index])
            for variant, make in VARIANTS.items():
                generator = torch.Generator().manual_seed(seed)
                delta = {name: make(own[name].float(), m, u.float(), lam, generator) for name, (u, m) in parts.items()}
                table[variant][task] = evaluate(delta, task)
                print(f"{task:12s} {variant:16s} {table[variant][task]:5.1f}", flush=True)
    return table


def count_gaps(
    deltas: dict[str, Path], individual: dict[str, float], counts: list[int], out: Path, evaluate: Evaluator
) -> list[dict]:
    """For the first n tasks: the individual models' mean and their ConDU experts' mean (one unify of n)."""
    rows = []
    tasks = list(deltas)
    for n in counts:
        unified = out / f"first{n}.st"
        if not unified.is_file():
            run("unify", *(deltas[t] for t in tasks[:n]), "-o", unified)
        with open_unified(unified) as unified_set:
            experts = [evaluate(dict(expert_tensors(unified_set, i)), task) for i, task in enumerate(tasks[:n])]
        mean_individual, mean_expert = sum(individual[t] for t in tasks[:n]) / n, sum(experts) / n
        gap = mean_expert - mean_individual
        rows.append({"tasks": n, "individual": mean_individual, "expert": mean_expert, "gap": gap})
        print(f"first {n}: individual {mean_individual:.1f}, experts {mean_expert:.1f}", flush=True)
    return rows


def markdown(table: dict[str, dict[str, float]], gaps: list[dict]) -> str:
    tasks = list(next(iter(table.values())))
    lines = ["| variant | " + " | ".join(tasks) + " | mean |", "|---|" + "---:|" * (len(tasks) + 1)]
    for variant, row in table.items():
        values = [row[t] for t in tasks]
        lines.append(
            f"| {variant} | " + " | ".join(f"{v:.1f}" for v in values) + f" | **{sum(values) / len(values):.1f}** |"
        )
    lines += ["", "| tasks unified | individual | ConDU experts | gap |", "|---:|---:|---:|---:|"]
    lines += [f"| {g['tasks']} | {g['individual']:.1f} | {g['expert']:.1f} | {g['gap']:+.1f} |" for g in gaps]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deltas", type=Path, required=True, help="folder of TASK.safetensors deltas")
    parser.add_argument("--out", type=Path, default=Path("condu-diagnosis"))
    parser.add_argument("--counts", default="2,3,5,11", help="numbers of tasks to unify (the first n, MTIL order)")
    parser.add_argument("--test-images", type=int, help="evaluate on the first N test images (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    found = {path.stem: path for path in args.deltas.glob("*.safetensors")}
    deltas = {task: found[task] for task in MTIL_ORDER if task in found} or dict(sorted(found.items()))
    if not deltas:
        raise SystemExit(f"{args.deltas}: no TASK.safetensors deltas")
    args.out.mkdir(parents=True, exist_ok=True)
    counts = [n for n in map(int, args.counts.split(",")) if n <= len(deltas)]
    evaluate = Evaluator(args.test_images)
    every = args.out / f"first{len(deltas)}.st"
    if not every.is_file():
        run("unify", *deltas.values(), "-o", every)
    table = variants(deltas, every, evaluate, args.seed)
    gaps = count_gaps(deltas, table["δ"], counts, args.out, evaluate)
    (args.out / "diagnosis.json").write_text(json.dumps({"variants": table, "counts": gaps}, indent=1) + "\n")
    print(markdown(table, gaps))


if __name__ == "__main__":
    main()
