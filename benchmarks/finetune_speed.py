"""Training throughput of `finetune --method coop` with the frozen-image-feature cache versus without it.

Both runs train the same prompt on the same data in one process; the script prints images/s of the training loop
and the wall-clock time of the whole command (model loading, feature encoding and writing included).

    .venv/bin/python benchmarks/finetune_speed.py --data toy:aircraft --shots 16 --epochs 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cftool.data import DatasetSpec
from cftool.train import FinetuneJob, TrainOptions, finetune


def measure(data: DatasetSpec, options: TrainOptions, feature_cache: bool, folder: Path) -> dict:
    name = "cache" if feature_cache else "no-cache"
    job = FinetuneJob(
        zs="tiny",
        data=data,
        method="coop",
        output=folder / f"{name}.safetensors",
        train=options,
        feature_cache=feature_cache,
        prototypes=False,  # the same pass over the whole split in both runs: it would only dilute the wall-clock ratio
    )
    began = time.perf_counter()
    result = finetune(job)
    wall = time.perf_counter() - began
    return {
        "feature_cache": feature_cache,
        "steps": result.steps,
        "train_images_per_second": round(result.images_per_second, 1),
        "wall_seconds": round(wall, 2),
        "final_loss": round(result.losses[-1], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="toy:aircraft")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DatasetSpec(args.data, shots=args.shots)
    options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=2e-3, optimizer="sgd")
    with tempfile.TemporaryDirectory() as folder:
        runs = [measure(data, options, cache, Path(folder)) for cache in (True, False)]
    speedup = runs[0]["train_images_per_second"] / runs[1]["train_images_per_second"]
    report = {
        "data": asdict(data),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "runs": runs,
        "train_speedup": round(speedup, 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
