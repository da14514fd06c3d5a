"""The sweep that chose `continue`'s defaults: CoOp + MergeTune on every base2new-tiny task and seed, over a grid of
λ_lmc, λ_zs and the zero-shot surrogate, scored on held-out training images (selection) and on the test split.

For each task and seed, CoOp is trained on 16 shots of the base classes (the recipe of finetune_bars.py), then
continued with each grid point for the same number of epochs. Validation is the task's *training* images the few-shot
draw did not pick (base half) and the training images of its novel classes, at most ``--val-images`` of each: a
choice made there never sees a test image. Image features of the frozen tower are encoded once per split and reused
for every prompt. Results (per task, seed and grid point) go to ``OUT/sweep.json``; the table printed at the end
averages over tasks and seeds, with HM the harmonic mean of the averaged base and novel accuracies.

    .venv/bin/python benchmarks/mergetune_sweep.py --threads 2 --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from cftool.data import BENCHMARKS, DatasetSpec, load_task
from cftool.encode.zero_shot import encode_images, zero_shot_head
from cftool.io.checkpoint import open_checkpoint
from cftool.kinds.apply import apply_checkpoint
from cftool.metrics import harmonic_mean, top1_accuracy
from cftool.train import FinetuneJob, TrainOptions, finetune
from cftool.train.continued import ContinueJob, continue_training
from cftool.train.objectives import MergeTuneOptions
from cftool.zoo import load_model

COOP = TrainOptions(epochs=50, batch_size=32, lr=5e-2, optimizer="sgd")


def floats(text: str) -> list[float]:
    return [float(item) for item in text.split(",")]


def encoded_halves(zoo, source: str, seed: int, shots: int, val_images: int) -> dict[str, tuple]:
    """Features, labels and class names of base/novel test images and of held-out base/novel training images."""
    halves = {}
    generator = torch.Generator().manual_seed(1000 + seed)
    for classes in ("base", "novel"):
        task = load_task(DatasetSpec(source, classes=classes))
        test = encode_images(zoo, task.split("test", zoo.preprocess))
        train = task.split("train", zoo.preprocess)
        if classes == "base":  # leave out the few-shot images CoOp trains on
            picked = {index for index, _ in load_task(DatasetSpec(source, "base", shots, seed)).split("train").items}
            train.items = [item for item in train.items if item[0] not in picked]
        order = torch.randperm(len(train.items), generator=generator)[:val_images].sort().values
        train.items = [train.items[i] for i in order.tolist()]
        halves[f"test_{classes}"] = (*test, task.classnames, task.templates)
        halves[f"val_{classes}"] = (*encode_images(zoo, train), task.classnames, task.templates)
    return halves


def accuracies(zoo, head, halves: dict) -> dict[str, float]:
    return {
        name: top1_accuracy(features @ head(zoo, classnames, templates), labels)
        for name, (features, labels, classnames, templates) in halves.items()
    }


def summary(rows: list[dict], split: str) -> dict[str, float]:
    base = statistics.mean(row[f"{split}_base"] for row in rows)
    novel = statistics.mean(row[f"{split}_novel"] for row in rows)
    return {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="", help="comma-separated toy tasks (default: all of base2new-tiny)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--lambda-lmc", type=floats, default=[0.0, 1.0])
    parser.add_argument("--lambda-zs", type=floats, default=[1.0, 3.0, 10.0])
    parser.add_argument("--zs-reg", default="feature", help="comma-separated: feature, param")
    parser.add_argument("--epochs", type=floats, default=[50.0], help="continued epochs (comma-separated)")
    parser.add_argument("--lr", type=floats, default=[5e-2], help="continued learning rate (comma-separated)")
    parser.add_argument("--val-images", type=int, default=400)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("sweep-out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    sources = [f"toy:{name}" for name in args.tasks.split(",") if name] or [
        spec.source for spec in BENCHMARKS["base2new-tiny"].tasks
    ]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    grid = list(itertools.product(args.zs_reg.split(","), args.lambda_lmc, args.lambda_zs, args.epochs, args.lr))
    zoo = load_model("tiny")
    results: dict[str, list[dict]] = {"zero-shot": [], "coop": [], **{json.dumps(point): [] for point in grid}}
    for source, seed in itertools.product(sources, seeds):
        halves = encoded_halves(zoo, source, seed, args.shots, args.val_images)
        where = {"task": source, "seed": seed}
        results["zero-shot"].append({**where, **accuracies(zoo, zero_shot_head, halves)})
        coop = args.out / f"{source[4:]}-seed{seed}.coop.safetensors"
        data = DatasetSpec(source, classes="base", shots=args.shots, seed=seed)
        finetune(FinetuneJob("tiny", data, "coop", coop, replace(COOP, seed=seed), {"n_ctx": None}, force=True))
        for name, path in [("coop", coop)] + [
            (json.dumps(point), args.out / f"{source[4:]}-seed{seed}.{index}.safetensors")
            for index, point in enumerate(grid)
        ]:
            if name != "coop":
                zs_reg, lambda_lmc, lambda_zs, epochs, lr = json.loads(name)
                options = MergeTuneOptions(lambda_lmc=lambda_lmc, lambda_zs=lambda_zs, zs_reg=zs_reg)
                overrides = {"epochs": epochs, "lr": lr}
                continue_training(
                    ContinueJob(coop, "tiny", options, output=path, train_overrides=overrides, force=True)
                )
            with open_checkpoint(path) as ckpt:
                results[name].append({**where, **accuracies(zoo, apply_checkpoint(zoo, ckpt), halves)})
        print(f"{source} seed {seed}: done", flush=True)
    (args.out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| run | val base | val novel | val HM | test base | test novel | test HM |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        val, test = summary(rows, "val"), summary(rows, "test")
        cells = " | ".join(f"{value:.1f}" for value in (*val.values(), *test.values()))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
