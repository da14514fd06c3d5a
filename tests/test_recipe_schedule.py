"""MergeTune's continuation recipe (Dassl's per-epoch schedule with a constant warm-up, drop-last batches) and
``--select best-val`` (Dassl's ``model-best.pth.tar``), each against the reference's logic written out here."""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from test_finetune import DATA

from cftool.data import DatasetSpec, load_task
from cftool.data.validation import few_shot_val_positions
from cftool.io.checkpoint import open_checkpoint
from cftool.train.continued import mergetune_coop_recipe
from cftool.train.finetune import BestValidation
from cftool.train.loop import BatchPlan, TrainOptions, learning_rate

pytestmark = pytest.mark.usefixtures("one_thread")


def _dassl_epoch_lrs(base_lr, max_epoch, warmup_epochs, warmup_lr):
    """The lr of each epoch under Dassl's build_lr_scheduler(cosine, constant warm-up, WARMUP_RECOUNT), stepped once
    after each epoch: torch's own CosineAnnealingLR, which the warm-up wrapper holds still until it hands over."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base_lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))
    rates = []
    for epoch in range(max_epoch):
        rates.append(warmup_lr if epoch < warmup_epochs else optimizer.param_groups[0]["lr"])
        if epoch >= warmup_epochs:  # the wrapper steps its successor only once its own warm-up is over
            optimizer.step()  # (no gradient: nothing moves; torch wants the order of a real run)
            cosine.step()
    return rates


def test_epoch_cosine_with_constant_warm_up_is_dassls_lr_at_every_step():
    # 10 images in batches of 4 with drop_last: 2 steps an epoch, the lr of the epoch at each of them.
    options = TrainOptions(
        epochs=6, batch_size=4, lr=2e-3, schedule="cosine-epoch", warmup_epochs=1, warmup_lr=1e-5, drop_last=True
    )
    total = options.total_steps(10)
    assert total == 12
    reference = _dassl_epoch_lrs(2e-3, 6, 1, 1e-5)
    closed_form = [1e-5] + [2e-3 * 0.5 * (1 + math.cos(math.pi * (e - 1) / 6)) for e in range(1, 6)]
    assert reference == pytest.approx(closed_form, abs=1e-12)
    for step in range(total):
        assert learning_rate(options, step, total, 10) == pytest.approx(reference[step // 2], abs=1e-9)
    # Two warm-up epochs: the cosine still spans all the epochs and starts at the peak after the warm-up.
    two = TrainOptions(epochs=5, batch_size=4, schedule="cosine-epoch", warmup_epochs=2, warmup_lr=3e-4, drop_last=True)
    rates = [learning_rate(two, step, 10, 10) for step in range(0, 10, 2)]
    assert rates == pytest.approx(_dassl_epoch_lrs(2e-3, 5, 2, 3e-4), abs=1e-9)


def test_drop_last_batches_are_whole_and_one_epoch_smaller_than_a_batch_is_kept_whole():
    plan = BatchPlan(10, 4, seed=1, drop_last=True)
    epoch = [plan.global_batch(step) for step in range(2)]
    assert all(len(batch) == 4 for batch in epoch)
    assert len(set(torch.cat(epoch).tolist())) == 8  # 2 of the 10 left out this epoch
    assert torch.equal(torch.cat(epoch), plan._permutation(0)[:8])
    small = BatchPlan(3, 8, seed=1, drop_last=True)  # Dassl drops only when len(data) >= batch_size
    assert sorted(small.global_batch(0).tolist()) == [0, 1, 2] and len(small.draw_seeds(0)) == 3
    assert TrainOptions(epochs=4, batch_size=8, drop_last=True).total_steps(3) == 4


def test_bad_schedule_options_are_one_line_errors():
    with pytest.raises(Exception, match="--schedule"):
        TrainOptions(epochs=1, schedule="linear")
    with pytest.raises(Exception, match="--warmup-epochs applies"):
        TrainOptions(epochs=1, warmup_epochs=1)
    with pytest.raises(Exception, match="--select"):
        TrainOptions(epochs=1, select="best")


def _dassl_kept_epoch(accuracies):
    """Dassl's after_epoch: is_best = curr_result > self.best_result, starting from -inf."""
    best, kept = -math.inf, None
    for epoch, accuracy in enumerate(accuracies):
        if accuracy > best:
            best, kept = accuracy, epoch
    return kept


class _Scripted(BestValidation):
    """BestValidation whose accuracies are given, and whose one parameter the test sets to the epoch number."""

    def __init__(self, accuracies):
        self.accuracies = iter(accuracies)
        self.parameter = torch.nn.Parameter(torch.zeros(1))
        self.trainable = {"p": self.parameter}
        self.val, self.task = [None] * 5, SimpleNamespace(spec=DatasetSpec("toy:mnist", shots=16))
        self.best_accuracy, self.best_epoch, self.best = float("-inf"), -1, {}

    def accuracy(self):
        return next(self.accuracies)


@pytest.mark.parametrize("accuracies", [[50, 70, 70, 60], [80, 20, 80, 81], [10, 10, 10], [30, 40, 50]])
def test_best_val_keeps_the_first_epoch_of_the_best_accuracy_as_dassl_does(accuracies):
    selection = _Scripted(accuracies)
    for epoch in range(len(accuracies)):
        with torch.no_grad():
            selection.parameter.fill_(epoch)
        selection(epoch)
    chosen = selection.restore()
    kept = _dassl_kept_epoch(accuracies)
    assert selection.parameter.item() == kept  # the parameters of that epoch, not the last
    assert chosen == {
        "rule": "best-val",
        "epoch": kept + 1,
        "val_accuracy": max(accuracies),
        "val_images": 5,
        "val_shots": 4,
    }


def _coop_val_positions(train_labels, val_labels, shots, seed):
    """CoOp's dataset classes: random.seed(seed) (Dassl's set_random_seed), then generate_fewshot_dataset on train
    with num_shots = shots and on val with min(shots, 4): per class in order of first appearance, random.sample."""
    random.seed(seed)
    kept = {}
    for labels, k in ((train_labels, shots), (val_labels, min(shots, 4))):
        groups = {}
        for position, label in enumerate(labels):
            groups.setdefault(label, []).append(position)
        chosen = []
        for members in groups.values():
            chosen += random.sample(members, k) if len(members) >= k else members
        kept[k] = chosen
    return kept[min(shots, 4)]


def test_val_draw_is_coops_for_a_given_seed():
    train = [2, 0, 1, 2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 0, 1] * 3
    val = [1, 1, 0, 2, 0, 1, 2, 2, 0, 1, 0, 2, 0, 1]
    for seed, shots in ((1, 16), (2, 2), (3, 4), (7, 8)):
        assert few_shot_val_positions(train, val, shots, seed) == _coop_val_positions(train, val, shots, seed)
    # class 1 first (its first image comes first), 4 of its 5; then 4 of class 0's 5; class 2 has 4: all, shuffled
    assert few_shot_val_positions(train, val, 8, seed=1) == [5, 0, 9, 13, 12, 2, 4, 10, 11, 7, 3, 6]
    # On a task: min(shots, 4) per class of the base half, drawn over all classes first.
    task = load_task(DatasetSpec("toy:mnist", classes="base", shots=2, seed=5))
    source_val = task.source.labels("val")
    expected = sorted(
        p for p in _coop_val_positions(task.source.labels("train"), source_val, 2, 5) if source_val[p] in task.class_ids
    )
    assert [index for index, _ in task.split("val").items] == expected
    assert len(expected) == 2 * len(task.classnames)


def test_finetune_select_best_val_records_the_selection(cli, tmp_path):
    output = tmp_path / "best.safetensors"
    result = cli(
        "finetune",
        *DATA,
        "--method",
        "head",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--select",
        "best-val",
        "--schedule",
        "cosine-epoch",
        "--warmup-epochs",
        "1",
        "--drop-last",
        "--no-prototypes",
        "-o",
        output,
        "--json",
    )
    assert result.code == 0, result.stderr
    selection = json.loads(result.stdout)["selection"]
    assert selection["rule"] == "best-val" and 1 <= selection["epoch"] <= 3
    assert selection["val_shots"] == 4 and selection["val_images"] == 4 * 5  # 4 shots of mnist's 5 base classes
    with open_checkpoint(output) as ckpt:
        assert ckpt.header.config["selection"] == selection and ckpt.header.config["select"] == "best-val"
    line = cli(
        "finetune",
        "--zs",
        "tiny",
        "--data",
        "toy:mnist",
        "--method",
        "head",
        "--iterations",
        "1",
        "--select",
        "best",
        "-o",
        tmp_path / "x.safetensors",
    )
    assert line.code != 0 and "--select" in line.stderr


def test_continue_of_a_coop_prompt_records_mergetunes_recipe_and_flags_win(cli, tmp_path):
    source = tmp_path / "coop.safetensors"
    quick = ["--no-prototypes"]  # no test here routes
    train = ["--method", "coop", "--iterations", "2", "--batch-size", "20", *quick]
    finetuned = cli("finetune", *DATA, *train, "-o", source)
    assert finetuned.code == 0, finetuned.stderr
    result = cli("continue", source, "--zs", "tiny", "--epochs", "2", "--precision", "fp32", *quick, "--json")
    assert result.code == 0, result.stderr
    with open_checkpoint(source.with_name("coop.mergetune.safetensors")) as ckpt:
        config = ckpt.header.config
    assert config["recipe"] == "mergetune-coop" and config["mergetune"]["lmc_samples"]
    expected = {**mergetune_coop_recipe(), "epochs": 2, "precision": "fp32"}  # the flags win
    assert {key: config[key] for key in expected} == expected
    assert config["selection"]["rule"] == "best-val"
    # MergeTune validates on the whole validation split (its dataset files keep it once CoOp has run)
    assert config["data"]["val_images"] == "all" and config["selection"]["val_shots"] is None
    inherited = cli(
        "continue", source, "--zs", "tiny", "--inherit-recipe", *quick, "-o", tmp_path / "inherited.safetensors"
    )
    assert inherited.code == 0, inherited.stderr
    with open_checkpoint(tmp_path / "inherited.safetensors") as ckpt:
        config = ckpt.header.config
    assert config["recipe"] == "source" and (config["batch_size"], config["iterations"]) == (20, 2)


def test_val_images_all_is_the_whole_split_and_few_shot_coops_draw():
    spec = DatasetSpec("toy:mnist", classes="base", shots=8, seed=1)
    whole = load_task(DatasetSpec("toy:mnist", classes="base"), None).split("val")
    drawn = load_task(spec, None).split("val")
    kept = load_task(DatasetSpec(**{**json.loads(spec.to_json()), "val_images": "all"}), None).split("val")
    assert len(kept) == len(whole) and len(drawn) == 4 * len(load_task(spec, None).classnames) < len(whole)
