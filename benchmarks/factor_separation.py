"""Which factors of the toy world does a pretrained model tell apart, on the image side and on the text side?

Images: a contrast group (cftool/data/toyworld.py) is eight scenes that share everything but one factor, each
captioned with that factor named. For each varying factor this draws groups of single-item scenes from the
pretraining stream (seed `--seed`, past any index a pretraining run reads) and reports the image-to-caption top-1
inside each group (chance 12.5 %) and the mean cosine between the group's image features and between its captions'
features: a factor the image tower drops shows as chance top-1 with image features that barely differ.

Text: for each toy task, the mean cosine between its classes' prompt features (each class's templates averaged, as
zero-shot uses them); near 1, the text tower maps the task's classes to one point and no image feature can help.
Contrastive learning cannot start on a factor that both towers drop: neither gives the other a gradient for it.
One JSON line.

    .venv/bin/python benchmarks/factor_separation.py tiny
    .venv/bin/python benchmarks/factor_separation.py cftool-tiny-resnet:resnet.safetensors \\
        --model-config scripts/cftool-tiny-resnet.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import open_clip
import torch

from cftool.data.toy import TOY_TASKS
from cftool.data.toyworld import (
    GROUP_SIZE,
    SINGLE_ITEM_KINDS,
    VARYING_FACTORS,
    caption,
    pretraining_scene,
    render,
    sample_group,
    stable_seed,
)
from cftool.encode.zero_shot import class_text_means, head_of_means
from cftool.zoo.models import load_model

FIRST_GROUP = 10**7  # far past the groups a pretraining run of any budget reads


def group_with(rng: np.random.Generator, varying: str):
    """A single-item contrast group of the pretraining stream, made to vary `varying`."""
    while (group := sample_group(rng)).kind not in SINGLE_ITEM_KINDS:
        pass
    return dataclasses.replace(group, varying=varying)


@torch.inference_mode()
def within_group_scores(zoo, varying: str, groups: int, seed: int) -> dict:
    hits, image_cosines, text_cosines = 0, [], []
    off_diagonal = ~torch.eye(GROUP_SIZE, dtype=torch.bool)
    for number in range(groups):
        rng = np.random.default_rng(stable_seed("contrast-groups", seed, varying, FIRST_GROUP + number))
        group = group_with(rng, varying)
        scenes = [pretraining_scene(rng, group) for _ in range(GROUP_SIZE)]
        captions = [caption(scene, rng, named=varying) for scene in scenes]
        images = torch.stack([zoo.preprocess(render(scene)) for scene in scenes])
        image_features = zoo.model.encode_image(images, normalize=True)
        text_features = zoo.model.encode_text(zoo.tokenizer(captions), normalize=True)
        hits += int(((image_features @ text_features.T).argmax(1) == torch.arange(GROUP_SIZE)).sum())
        image_cosines.append((image_features @ image_features.T)[off_diagonal].mean().item())
        text_cosines.append((text_features @ text_features.T)[off_diagonal].mean().item())
    return {
        "image_to_caption_top1": round(100 * hits / (groups * GROUP_SIZE), 1),
        "image_cosine": round(float(np.mean(image_cosines)), 3),
        "caption_cosine": round(float(np.mean(text_cosines)), 3),
    }


def class_prompt_cosine(zoo, classnames: tuple[str, ...], templates: tuple[str, ...]) -> float:
    """Mean cosine between distinct classes' prompt features."""
    head = head_of_means(class_text_means(zoo, classnames, templates))  # [embed_dim, n_classes], normalised
    return round((head.T @ head)[~torch.eye(len(classnames), dtype=torch.bool)].mean().item(), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model spec, as `cftool eval` takes it")
    parser.add_argument("--model-config", type=Path, help="an open_clip model config the spec's architecture names")
    parser.add_argument("--groups", type=int, default=64, help="groups per varying factor")
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.groups < 1:
        parser.error("--groups: at least one group")
    torch.set_num_threads(args.threads)
    if args.model_config:
        open_clip.add_model_config(args.model_config)
    zoo = load_model(args.model)
    zoo.model.eval()
    factors = dict.fromkeys(VARYING_FACTORS)  # each factor once, in the stream's order
    scores = {factor: within_group_scores(zoo, factor, args.groups, args.seed) for factor in factors}
    prompts = {name: class_prompt_cosine(zoo, task.classnames, task.templates) for name, task in TOY_TASKS.items()}
    report = {"model": args.model, "groups": args.groups, "seed": args.seed, "factors": scores}
    print(json.dumps({**report, "class_prompt_cosine": prompts}))


if __name__ == "__main__":
    main()
