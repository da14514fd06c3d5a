"""Step time of `continue` (MergeTune, default options) against `finetune --method coop` on the same data and batch.

Both train a prompt on cached image features in one process: CoOp first, then MergeTune continued from it for the
same number of steps with the same batch (CoOp's recipe, `--inherit-recipe`: MergeTune's own recipe changes the
batch and the length). MergeTune's path points are class-feature interpolations, so a step should cost about one
CoOp step (one text-encoder pass) plus one batched product over the path points. Both are run ``--repeats`` times,
alternately, and each keeps its best training-loop images/s (the run least disturbed by anything else on the
machine); prints them and the ratio (continue step time) / (coop step time). Target ≤ 1.3.

    .venv/bin/python benchmarks/continue_speed.py --data toy:aircraft --shots 16 --epochs 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from cftool.data import DatasetSpec
from cftool.train import FinetuneJob, TrainOptions, finetune
from cftool.train.continued import ContinueJob, continue_training
from cftool.train.objectives import MergeTuneOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="toy:aircraft")
    parser.add_argument("--classes", default="base")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = DatasetSpec(args.data, classes=args.classes, shots=args.shots)
    options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=5e-2, optimizer="sgd")
    mergetune = MergeTuneOptions()
    speeds: dict[str, list[float]] = {"coop": [], "continue": []}
    with tempfile.TemporaryDirectory() as folder:
        coop_file = Path(folder) / "coop.safetensors"
        for _ in range(args.repeats):
            # No prototypes: what is timed is training.
            job = FinetuneJob("tiny", data, "coop", coop_file, options, {"n_ctx": None}, force=True, prototypes=False)
            coop = finetune(job)
            continued = continue_training(
                ContinueJob(coop_file, "tiny", mergetune, force=True, inherit_recipe=True, prototypes=False)
            )
            speeds["coop"].append(coop.images_per_second)
            speeds["continue"].append(continued.images_per_second)
    best = {name: max(values) for name, values in speeds.items()}
    runs = [
        {
            "run": name,
            "steps": result.steps,
            "train_images_per_second": round(best[name], 1),
            "every_repeat": [round(value, 1) for value in speeds[name]],
        }
        for name, result in (("coop", coop), ("continue", continued))
    ]
    report = {
        "data": asdict(data),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "mergetune": mergetune.to_dict(),
        "runs": runs,
        "repeats": args.repeats,
        "step_time_ratio": round(best["coop"] / best["continue"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
