"""The validation split of a few-shot task, drawn as CoOp's datasets and Dassl draw it.

CoOp's dataset classes (e.g. CoOp/datasets/oxford_pets.py:33-48) draw the few-shot training set and then the
validation set with Dassl's ``generate_fewshot_dataset`` (dassl/data/datasets/base_dataset.py:155-196): Python's
``random`` module, seeded with the run's seed (dassl/utils/tools.py:73-77), samples ``random.sample(items, k)`` of
each class in the order the classes first appear in the split (a ``defaultdict`` filled in split order, :199-211),
and takes a class whole when it has fewer than ``k`` images. The training draw (k = shots) comes first and the
validation draw (k = min(shots, 4)) continues the same random stream; both run over all classes, and the base or
novel half is taken afterwards (``subsample_classes``). cftool's own training draw is another (`specs._few_shot`),
so the validation draw replays Dassl's training draw only to advance the stream: the validation images are those
CoOp's run with the same seed validates on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

VAL_SHOTS_CAP = 4  # CoOp's datasets: generate_fewshot_dataset(val, num_shots=min(num_shots, 4))


def val_shots(shots: int | None) -> int | None:
    """Validation images per class of a run with ``shots`` training images per class (None: the whole split)."""
    return None if shots is None else min(shots, VAL_SHOTS_CAP)


def dassl_few_shot(labels: Sequence[int], shots: int, rng: random.Random) -> list[int]:
    """Positions of the items ``generate_fewshot_dataset(items, num_shots=shots)`` keeps, in the order it keeps them."""
    by_label: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(label, []).append(position)
    kept: list[int] = []
    for members in by_label.values():
        kept.extend(rng.sample(members, shots) if len(members) >= shots else members)
    return kept


def few_shot_val_positions(train_labels: Sequence[int], val_labels: Sequence[int], shots: int, seed: int) -> list[int]:
    """Positions in the validation split of the images a ``shots``-shot CoOp run with ``seed`` validates on."""
    rng = random.Random(seed)
    dassl_few_shot(train_labels, shots, rng)  # the training draw, which the validation draw follows in the stream
    return dassl_few_shot(val_labels, val_shots(shots), rng)
