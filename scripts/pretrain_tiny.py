"""Pretrain the embedded `tiny` CLIP contrastively on the toy world's captions, on a CPU.

    python scripts/pretrain_tiny.py --seed 0 --steps 4000 --lr 1e-3 -o cftool/zoo/weights/tiny.safetensors

(the shipped weights: about 46 minutes on 2 CPU cores). `--model-config FILE.json` pretrains another open_clip
architecture instead of `cftool-tiny`, the ViT (the candidates of benchmarks/RESULTS.md, e.g. the ResNet `tiny` that
shipped before it, scripts/cftool-tiny-resnet.json, with --steps 2000 --lr 1.5e-3); its name is the file's stem.

The run is a pure function of (seed, steps, batch size, learning rate): examples are drawn by index
from the toy world, initialisation is seeded, and the learning-rate schedule spans `--steps`. A
`--minutes` budget can stop it early, but then the model is only reproducible from the step count
it records in the output's metadata. At the end it prints the zero-shot accuracy on every toy task
and on the held-out colour-shape combinations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import safetensors.torch
import torch
from open_clip.pos_embed import get_2d_sincos_pos_embed
from open_clip.transformer import VisionTransformer

from cftool.data import load_task
from cftool.data.toy import HELDOUT_TASK, TOY_TASKS, pretraining_example
from cftool.encode.zero_shot import evaluate_zero_shot
from cftool.io.outputs import atomic_output
from cftool.zoo.models import TINY_ARCH, ZooModel, load_model

THREADS = 2  # fixed so that CPU kernels reduce in the same order on every re-run
WARMUP_FRACTION = 0.05
REPORT_TASKS = (*TOY_TASKS, HELDOUT_TASK.name)


def create_tiny(seed: int = 0, arch: str = TINY_ARCH) -> tuple[open_clip.CLIP, Callable, Callable]:
    """A freshly initialised `tiny` (seeded), with open_clip's own eval transform and tokenizer."""
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch)
    if isinstance(model.visual, VisionTransformer):
        start_positions_as_sin_cos(model.visual)
    return model, preprocess, open_clip.get_tokenizer(arch)


def start_positions_as_sin_cos(tower: VisionTransformer) -> None:
    """Start a ViT's learned position embedding at the 2-D sine-cosine one (MAE's), where open_clip draws it at
    random: a ViT this small learns where things are far too slowly from a random start on a CPU budget (the probes
    of benchmarks/RESULTS.md, "A ViT `tiny`"), and the embedding stays a learned parameter, as in ViT-B/16."""
    side = tower.grid_size[0]
    grid = get_2d_sincos_pos_embed(tower.positional_embedding.shape[1], side, cls_token=True)
    with torch.no_grad():
        tower.positional_embedding.copy_(torch.from_numpy(grid).to(tower.positional_embedding.dtype))


def pretraining_batch(
    step: int, batch_size: int, seed: int, preprocess: Callable, tokenizer: Callable
) -> tuple[torch.Tensor, torch.Tensor]:
    examples = [pretraining_example(step * batch_size + i, seed) for i in range(batch_size)]
    images = torch.stack([preprocess(image) for image, _ in examples])
    return images, tokenizer([text for _, text in examples])


def learning_rate(step: int, steps: int, peak: float) -> float:
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def make_optimizer(model: torch.nn.Module, peak_lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with decay on weight matrices only (not on gains, biases, embeddings or the temperature)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        matrix = parameter.ndim >= 2 and "embedding" not in name
        (decay if matrix else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(0.9, 0.98), eps=1e-6)


def pretrain(
    seed: int,
    steps: int,
    minutes: float,
    batch_size: int,
    peak_lr: float,
    weight_decay: float,
    log_every: int,
    arch: str = TINY_ARCH,
) -> tuple[open_clip.CLIP, int, float]:
    """Train until `steps` or `minutes` runs out; returns the model, the steps done and the minutes taken."""
    torch.set_num_threads(THREADS)
    model, preprocess, tokenizer = create_tiny(seed, arch)
    model.train()
    optimizer = make_optimizer(model, peak_lr, weight_decay)
    loss_fn = open_clip.ClipLoss()
    start = time.monotonic()
    step = 0
    while step < steps and time.monotonic() - start < 60 * minutes:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr)
        images, texts = pretraining_batch(step, batch_size, seed, preprocess, tokenizer)
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        if step % log_every == 0 or step == steps:
            print(
                f"step {step}/{steps}  loss {loss.item():.3f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                f"{(time.monotonic() - start) / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )
    return model.eval(), step, (time.monotonic() - start) / 60


def zero_shot_report(zoo: ZooModel) -> dict[str, float]:
    """Zero-shot top-1 % on every toy task's test split and on the held-out combinations (`heldout-combos`)."""
    results = evaluate_zero_shot(zoo, [load_task(f"toy:{name}") for name in REPORT_TASKS])
    return {result.task: result.accuracy for result in results}


def save_weights(model: open_clip.CLIP, path: Path, metadata: dict[str, str]) -> None:
    # float16 halves the file; the 49408-token embedding dominates it.
    state = {name: tensor.detach().to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    # Atomic, so that an interrupted save never leaves a half-written file where the package expects its weights.
    with atomic_output(path, overwrite=True) as temporary:
        # Not save_file: it recreates the file with mode 0600, where the temporary file has the umask's mode.
        temporary.write_bytes(safetensors.torch.save(state, metadata=metadata))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000, help="step budget; the schedule spans it")
    parser.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget (stops early, not reproducible)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--model-config", type=Path, help="an open_clip model config to pretrain instead of tiny's")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    arch = TINY_ARCH
    if args.model_config is not None:
        if not args.model_config.is_file():
            parser.error(f"--model-config {args.model_config}: no such file")
        try:
            config = json.loads(args.model_config.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            parser.error(f"--model-config {args.model_config}: not a JSON model config ({error})")
        if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= config.keys():
            parser.error(
                f"--model-config {args.model_config}: an open_clip model config has embed_dim, vision_cfg and text_cfg"
            )
        open_clip.add_model_config(args.model_config)
        arch = args.model_config.stem
    # An hour of training must not end in an unwritable path.
    folder = next(parent for parent in args.output.absolute().parents if parent.exists())
    if args.output.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        parser.error(f"-o {args.output}: not a writable file path")

    model, steps_done, minutes = pretrain(
        args.seed, args.steps, args.minutes, args.batch_size, args.lr, args.weight_decay, args.log_every, arch
    )
    metadata = {
        "cftool.pretrain.arch": arch,
        "cftool.pretrain.seed": str(args.seed),
        "cftool.pretrain.steps": str(steps_done),
        "cftool.pretrain.step_budget": str(args.steps),
        "cftool.pretrain.minutes": f"{minutes:.1f}",
        "cftool.pretrain.batch_size": str(args.batch_size),
        "cftool.pretrain.lr": str(args.lr),
        "cftool.pretrain.weight_decay": str(args.weight_decay),
        "cftool.pretrain.torch": torch.__version__,
        "cftool.pretrain.open_clip": open_clip.__version__,
    }
    save_weights(model, args.output, metadata)
    print(f"wrote {args.output} after {steps_done} steps in {minutes:.1f} min", file=sys.stderr)
    report = zero_shot_report(load_model(f"{arch}:{args.output}"))
    for name, accuracy in report.items():
        print(f"{name:16s} {accuracy:5.1f}")
    print(f"{'mean (11 tasks)':16s} {sum(report[n] for n in TOY_TASKS) / len(TOY_TASKS):5.1f}")


if __name__ == "__main__":
    main()
