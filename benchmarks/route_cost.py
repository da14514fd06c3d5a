"""Expert forward passes of task-agnostic routing (`cftool route`, docs/design.md §5.3): each routed expert
rebuilt once and
run only on the images routed to it, against the plain way (every expert on every image, then each image's members
selected), on the same images in the same run.

A pass is one image through one image encoder; both ways also run the zero-shot model once per image (its features
route the images and join the mean). With K experts per image out of M, routing needs (K + 1) passes per image and
the plain way M + 1, so the ratio should be (K + 1)/(M + 1); the target is that plus 10 %, with identical
predictions.

By default the unified set is made here from eleven stand-in fine-tunes of `tiny` (every float tensor moved by small
noise) with the real prototypes of the mtil-tiny tasks (zero-shot class means of their training images), and the
images are the first --images-per-task test images of each task. ``--unified`` and ``--prototypes`` measure a set
of your own instead (e.g. session 11 of examples/condu_mtil_tiny.sh).

    .venv/bin/python benchmarks/route_cost.py                               # K = 1 of 11 experts
    .venv/bin/python benchmarks/route_cost.py --unified runs/condu-mtil-full/condu/session11.st \\
        --prototypes 'runs/condu-mtil-full/individual/*.prototypes.safetensors'
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Subset

from cftool.cli import main as cftool
from cftool.data import get_benchmark, load_task
from cftool.encode.zero_shot import LabelSpace, encode_images, zero_shot_head
from cftool.eval.route import (
    ZERO_SHOT_MEMBER,
    Members,
    Passes,
    every_expert_route_logits,
    prototype_files,
    prototypes_of,
    read_prototypes,
    route_logits,
    routing_scores,
    top_tasks,
)
from cftool.io.checkpoint import save_checkpoint
from cftool.io.unified import open_unified
from cftool.kinds.apply import BaseState
from cftool.kinds.prototypes import class_prototypes
from cftool.zoo import load_model

SLACK = 1.10  # the target: (K + 1)/(M + 1) of the passes, plus 10 %


def stand_in_set(zoo, tasks, folder: Path, seed: int, train_images: int) -> tuple[Path, str]:
    """A ConDU set of one noise fine-tune per task, and each task's prototypes from its training images."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: t.clone() for name, t in zoo.model.state_dict().items()}
    deltas = []
    for task in tasks:
        delta = {n: 1e-3 * torch.randn(t.shape, generator=generator) for n, t in state.items() if t.is_floating_point()}
        header = zoo.base_header("delta", task=task.name, classnames=task.classnames, template=task.templates[0])
        deltas.append(save_checkpoint(folder / f"{task.name}.delta.safetensors", delta, header))
        train = Subset(task.split("train", zoo.preprocess), range(train_images))
        features, labels = encode_images(zoo, train, 128, 0)
        prototypes = class_prototypes(features, labels, zero_shot_head(zoo, task.classnames, task.templates))
        header = zoo.base_header("prototypes", task=task.name, classnames=task.classnames)
        save_checkpoint(folder / f"{task.name}.prototypes.safetensors", {"prototypes": prototypes}, header)
    unified = folder / "unified.st"
    with contextlib.redirect_stdout(io.StringIO()):  # stdout is the report's
        code = cftool([*map(str, ["unify", *deltas, "-o", unified])])
    if code:
        raise SystemExit("`cftool unify` of the stand-in deltas failed")
    return unified, str(folder / "*.prototypes.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unified", type=Path, help="a unified set to measure (default: stand-ins made here)")
    parser.add_argument("--prototypes", help="its tasks' prototype files, a quoted glob")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--images-per-task", type=int, default=40)
    parser.add_argument("--train-images", type=int, default=400, help="stand-ins: images per task's prototypes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if (args.unified is None) != (args.prototypes is None):
        parser.error("give --unified and --prototypes together")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    zoo = load_model("tiny")
    tasks = [load_task(spec) for spec in get_benchmark("mtil-tiny").tasks]
    with tempfile.TemporaryDirectory() as scratch:
        unified_path, pattern = (
            (args.unified, args.prototypes)
            if args.unified
            else stand_in_set(zoo, tasks, Path(scratch), args.seed, args.train_images)
        )
        images = ConcatDataset(
            [Subset(task.split("test", zoo.preprocess), range(args.images_per_task)) for task in tasks]
        )
        # The label space of a mixed batch: every task's classes (routing itself does not depend on it).
        label_space = LabelSpace.union(tasks, tasks[0])
        base_state = BaseState(zoo)
        features, _ = encode_images(zoo, images, args.batch_size, 0)
        with open_unified(unified_path, base_sha256=zoo.weights_sha256) as unified:
            embed_dim = zoo.model.text_projection.shape[-1]
            known = read_prototypes(prototype_files([pattern]), zoo, zoo.weights_sha256, embed_dim)
            routed = top_tasks(routing_scores(features, prototypes_of(unified, known)), args.top_k)
            members = Members(unified, routed, include_zero_shot=True)
            runs = {}
            for name, run in (("routed", route_logits), ("every expert", every_expert_route_logits)):
                passes = Passes()
                passes.counter(ZERO_SHOT_MEMBER)(len(images))  # the zero-shot features both ways use
                start = time.perf_counter()
                logits = run(zoo, members, images, features, label_space, base_state, args.batch_size, 0, passes)
                seconds = time.perf_counter() - start
                runs[name] = {
                    "logits": logits,
                    "passes": sum(passes.images.values()),
                    "seconds": seconds,
                    "experts_rebuilt": sum(1 for m in passes.images if m != ZERO_SHOT_MEMBER),
                }
            n_experts, task_names = len(unified.task_names), unified.task_names
    routed_run, every_run = runs["routed"], runs["every expert"]
    ratio = routed_run["passes"] / every_run["passes"]
    ideal = (args.top_k + 1) / (n_experts + 1)
    identical = torch.equal(routed_run["logits"].argmax(1), every_run["logits"].argmax(1))
    report = {
        "experts": n_experts,
        "top_k": args.top_k,
        "images": len(images),
        "passes": {name: run["passes"] for name, run in runs.items()},
        "experts_rebuilt": {name: run["experts_rebuilt"] for name, run in runs.items()},
        "seconds": {name: round(run["seconds"], 2) for name, run in runs.items()},
        "pass_ratio": round(ratio, 4),
        "ideal_ratio": round(ideal, 4),
        "target_ratio": round(ideal * SLACK, 4),
        "meets_target": ratio <= ideal * SLACK and identical,
        "identical_predictions": identical,
        "max_logit_difference": float((routed_run["logits"] - every_run["logits"]).abs().max()),
        "routed_to": {task: int((routed == i).any(1).sum()) for i, task in enumerate(task_names)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
