"""Can an image tower learn one toy task's factor from scratch? The check that chose tiny's image tower.

The tower plus a linear layer is trained with cross-entropy on a task's first training images (batch 128, AdamW) and
scored on its first test images; one JSON line per run, with the seconds per step. The ViT is open_clip's
VisionTransformer (QuickGELU) built from `--vision` (an open_clip vision config, JSON); `--positions sin-cos`
starts its learned position embedding at the 2-D sine-cosine one, as scripts/pretrain_tiny.py does.

    .venv/bin/python benchmarks/tower_probe.py --task eurosat --positions sin-cos \\
        --vision '{"image_size": 64, "patch_size": 8, "layers": 4, "width": 128, "head_width": 32}'
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from open_clip.transformer import VisionTransformer
from torch import nn

from cftool.data.toy import toy_source

EMBED_DIM = 128  # tiny's


def _pretraining_script():
    """scripts/pretrain_tiny.py, whose start of the position embedding the probe shares."""
    path = Path(__file__).parents[1] / "scripts" / "pretrain_tiny.py"
    spec = importlib.util.spec_from_file_location("pretrain_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encoded(task: str, split: str, count: int, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    source = toy_source(task)
    labels = source.labels(split)[:count]
    images = torch.stack([preprocess(source.image(split, index)) for index in range(len(labels))])
    return images, torch.tensor(labels)


def probe(task: str, vision: dict, positions: str, steps: int, lr: float, train: int, test: int) -> dict:
    torch.manual_seed(0)
    tower = _build_vision_tower(EMBED_DIM, CLIPVisionCfg(**vision), quick_gelu=True)
    if positions == "sin-cos":
        if not isinstance(tower, VisionTransformer):
            raise SystemExit("--positions sin-cos: only a ViT has a position embedding")
        _pretraining_script().start_positions_as_sin_cos(tower)
    preprocess = open_clip.image_transform(vision["image_size"], is_train=False)  # open_clip's eval transform
    train_images, train_labels = encoded(task, "train", train, preprocess)
    test_images, test_labels = encoded(task, "test", test, preprocess)
    model = nn.Sequential(tower, nn.Linear(EMBED_DIM, int(train_labels.max()) + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    draws = torch.Generator().manual_seed(0)
    began = time.perf_counter()
    model.train()
    for _ in range(steps):
        batch = torch.randint(len(train_labels), (128,), generator=draws)
        loss = F.cross_entropy(model(train_images[batch]), train_labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds_per_step = (time.perf_counter() - began) / steps
    model.eval()
    with torch.no_grad():
        accuracy = 100 * (model(test_images).argmax(1) == test_labels).float().mean().item()
    return {
        "task": task,
        "vision": vision,
        "positions": positions,
        "steps": steps,
        "lr": lr,
        "parameters_m": round(sum(p.numel() for p in tower.parameters()) / 1e6, 3),
        "seconds_per_step": round(seconds_per_step, 3),
        "train_loss": round(loss.item(), 3),
        "test_accuracy": round(accuracy, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="eurosat")
    parser.add_argument("--vision", type=json.loads, required=True, help="an open_clip vision config, as JSON")
    parser.add_argument("--positions", choices=("random", "sin-cos"), default="random")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    fields = {field.name for field in dataclasses.fields(CLIPVisionCfg)}
    if not isinstance(args.vision, dict) or not args.vision.keys() <= fields:
        parser.error(f"--vision: an open_clip vision config's keys are among {', '.join(sorted(fields))}")
    torch.set_num_threads(args.threads)
    result = probe(args.task, args.vision, args.positions, args.steps, args.lr, args.train_images, args.test_images)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
