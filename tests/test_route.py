"""`route`: ConDU's task-agnostic inference (docs/design.md §5.3) — scores on hand-built prototypes, each expert run
only on its images with the same predictions as running every expert, and the command's errors."""

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error, stand_in_finetune

from cftool.data import load_task
from cftool.encode.zero_shot import LabelSpace, encode_images, zero_shot_head
from cftool.eval.route import (
    LOGIT_SCALE,
    Members,
    Passes,
    every_expert_route_logits,
    route_logits,
    routing_scores,
    top_tasks,
)
from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.io.unified import open_unified
from cftool.kinds.apply import BaseState
from cftool.zoo import load_model
from cftool.zoo.base_weights import open_base

TASKS = ("food", "mnist", "cars")


def test_scores_are_each_tasks_best_class_cosine():
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    prototypes = [
        torch.tensor([[1.0, 0.0], [-1.0, 0.0]]),  # task 0: classes along ±x
        torch.tensor([[0.0, 1.0]]),  # task 1: +y
        torch.tensor([[0.6, 0.8], [0.0, -1.0], [-1.0, 0.0]]),  # task 2
    ]
    scores = routing_scores(features, prototypes)
    cos45 = 2**-0.5
    expected = torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8], [cos45, cos45, 1.4 * cos45]])
    assert torch.allclose(scores, expected, atol=1e-6)
    assert top_tasks(scores, 1).squeeze(1).tolist() == [0, 1, 2]
    assert top_tasks(scores, 2).tolist() == [[0, 2], [1, 2], [2, 0]]  # [2]: tasks 0 and 1 tie, the earlier first
    assert top_tasks(scores, 9).shape == (3, 3)  # K beyond the number of tasks: all of them


def test_equal_scores_route_to_the_earlier_task_whatever_their_number():
    same = torch.tensor([[0.0, 1.0]])
    scores = routing_scores(torch.tensor([[0.0, 1.0]] * 4), [same.clone() for _ in range(12)])
    assert top_tasks(scores, 4).tolist() == [[0, 1, 2, 3]] * 4


@pytest.fixture(scope="module")
def condu(toy_folders, tmp_path_factory):
    """A unified set of three (stand-in) full fine-tunes of `tiny`, one per folder task, and prototypes for each."""
    from cftool.cli import main

    folder = tmp_path_factory.mktemp("condu")
    deltas = []
    with open_base("tiny") as weights:
        state = {name: weights[name] for name in weights}
        for seed, name in enumerate(TASKS):
            task = load_task(f"folder:{toy_folders[name]}")
            header = weights.header("model", task=name, classnames=task.classnames, template="a photo of a {}.")
            model = save_checkpoint(folder / f"{name}.safetensors", stand_in_finetune(state, seed), header)
            prototypes = torch.randn(len(task.classnames), 128, generator=torch.Generator().manual_seed(seed))
            save_checkpoint(
                folder / f"{name}.prototypes.safetensors",
                {"prototypes": prototypes},
                weights.header("prototypes", task=name, classnames=task.classnames),
            )
            deltas.append(folder / f"{name}.delta.safetensors")
            assert main(["delta", str(model), "--zs", "tiny", "-o", str(deltas[-1])]) == 0
    assert main(["unify", *map(str, deltas), "-o", str(folder / "unified.st")]) == 0
    return folder


@pytest.fixture(scope="module")
def zoo():
    torch.set_num_threads(1)
    return load_model("tiny")


def test_each_expert_runs_once_on_its_images_with_the_predictions_of_running_all(zoo, condu, toy_folders):
    task = load_task(f"folder:{toy_folders['cars']}")
    images = task.split("test", zoo.preprocess)
    features, _ = encode_images(zoo, images, 16, 0)
    before = {name: t.clone() for name, t in zoo.model.state_dict().items()}
    base_state = BaseState(zoo)
    generator = torch.Generator().manual_seed(0)
    # Image i routes to two experts; expert 2 (cars) is chosen by no image.
    routed = torch.stack([torch.randperm(2, generator=generator) for _ in range(len(images))])
    with open_unified(condu / "unified.st") as unified:
        members = Members(unified, routed, include_zero_shot=True)
        routed_passes, all_passes = Passes(), Passes()
        args = (zoo, members, images, features, LabelSpace.own(task), base_state, 16, 0)
        logits = route_logits(*args, routed_passes)
        reference = every_expert_route_logits(*args, all_passes)
    assert torch.allclose(logits, reference, atol=1e-4)
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    assert routed_passes.images == {"food": len(images), "mnist": len(images)}  # each of its images, once
    assert all_passes.images == {name: len(images) for name in TASKS}
    assert all(torch.equal(zoo.model.state_dict()[n], t) for n, t in before.items())  # the base is back


def test_routing_every_image_to_its_own_task_alone_is_the_task_id_expert(zoo, condu, toy_folders):
    task = load_task(f"folder:{toy_folders['mnist']}")
    images = task.split("test", zoo.preprocess)
    features, _ = encode_images(zoo, images, 16, 0)
    base_state = BaseState(zoo)
    with open_unified(condu / "unified.st") as unified:
        own = torch.full((len(images), 1), unified.task_index("mnist"))
        members = Members(unified, own, include_zero_shot=False)
        logits = route_logits(zoo, members, images, features, LabelSpace.own(task), base_state, 16, 0)
        zero_shot = LOGIT_SCALE * features @ zero_shot_head(zoo, task.classnames, task.templates)
        from cftool.eval.route import RouteOptions, expert_split

        expert = expert_split(zoo, unified, "mnist", task, "test", RouteOptions(batch_size=16), base_state)
    assert torch.allclose(logits, expert.logits, atol=1e-4)
    assert not torch.allclose(logits, zero_shot, atol=1e-2)  # the expert is not the zero-shot model


def own_prototypes(zoo, folder, name, tmp_path, weights_header):
    """Prototypes for ``name`` that its own images are closest to (their class means), and the opposite vectors for
    the other tasks, so every image of ``name`` routes to it."""
    task = load_task(f"folder:{folder}")
    features, labels = encode_images(zoo, task.split("test", zoo.preprocess), 16, 0)
    means = torch.stack([F.normalize(features[labels == c].mean(0), dim=0) for c in range(len(task.classnames))])
    for other in TASKS:  # the other tasks' classes all get the opposite of the mean
        n_classes = len(load_task(f"folder:{folder.parent / other}").classnames)
        vectors = means if other == name else -means.mean(0, keepdim=True).expand(n_classes, -1)
        path = tmp_path / f"{other}.prototypes.safetensors"
        save_checkpoint(path, {"prototypes": vectors.contiguous()}, weights_header(other))
    return str(tmp_path / "*.prototypes.safetensors")


def test_route_with_top1_and_no_zero_shot_equals_the_task_id(cli, zoo, condu, toy_folders, tmp_path):
    with open_base("tiny") as weights:
        pattern = own_prototypes(
            zoo, toy_folders["food"], "food", tmp_path, lambda task: weights.header("prototypes", task=task)
        )
    data = f"folder:{toy_folders['food']}"
    routed = cli(
        "route",
        condu / "unified.st",
        "--prototypes",
        pattern,
        "--data",
        data,
        "--top-k",
        "1",
        "--no-zero-shot",
        "--json",
        "-o",
        tmp_path / "routed.csv",
    )
    assert routed.code == 0, routed.stderr
    expert = cli("route", condu / "unified.st", "--task", "food", "--data", data, "--json")
    assert expert.code == 0, expert.stderr
    routed, expert = json.loads(routed.stdout), json.loads(expert.stdout)
    assert {tuple(p["tasks"]) for p in routed["predictions"]} == {("food",)}
    assert [p["prediction"] for p in routed["predictions"]] == [p["prediction"] for p in expert["predictions"]]
    assert routed["accuracy"] == expert["accuracy"]
    assert (routed["routed_to_own_task"], expert["routed_to_own_task"]) == (100.0, None)
    with open(tmp_path / "routed.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == routed["num_images"] and rows[0]["tasks"] == "food"
    assert [int(row["prediction"]) for row in rows] == [p["prediction"] for p in routed["predictions"]]


def test_task_agnostic_route_averages_zero_shot_and_k_experts(cli, condu, toy_folders):
    result = cli(
        "route",
        condu / "unified.st",
        "--prototypes",
        str(condu / "*.prototypes.safetensors"),
        "--data",
        f"folder:{toy_folders['cars']}",
        "--top-k",
        "2",
        "--json",
    )
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["zero_shot"] and report["top_k"] == 2
    assert all(len(p["tasks"]) == 2 and len(set(p["tasks"])) == 2 for p in report["predictions"])
    assert report["expert_image_passes"] == 2 * report["num_images"]


def test_route_reads_the_unified_set_once_for_every_expert_it_rebuilds(cli, condu, toy_folders, monkeypatch):
    import cftool.io.header
    from cftool.io.unified import UnifiedSet

    unified = condu / "unified.st"
    scans, wraps = [], []
    read_raw_header, wrap = cftool.io.header._read_raw_header, UnifiedSet.__init__
    monkeypatch.setattr(
        cftool.io.header, "_read_raw_header", lambda path: scans.append(Path(path).resolve()) or read_raw_header(path)
    )
    monkeypatch.setattr(UnifiedSet, "__init__", lambda self, reader: wraps.append(reader.path) or wrap(self, reader))
    prototypes = str(condu / "*.prototypes.safetensors")
    data = f"folder:{toy_folders['cars']}"
    result = cli("route", unified, "--prototypes", prototypes, "--data", data, "--top-k", "2", "--json")
    assert result.code == 0, result.stderr
    assert len({task for p in json.loads(result.stdout)["predictions"] for task in p["tasks"]}) >= 2
    assert scans.count(unified.resolve()) == 1  # the kind, the base and the structure checked on one read
    assert wraps == [unified]  # not once more per expert rebuilt


def test_bad_routing_inputs_are_one_line_errors(cli, condu, toy_folders, tmp_path):
    data = f"folder:{toy_folders['food']}"
    unified = condu / "unified.st"
    assert "matches no file" in one_line_error(
        cli("route", unified, "--prototypes", str(tmp_path / "none-*.safetensors"), "--data", data)
    )
    assert "needs the tasks' prototypes" in one_line_error(cli("route", unified, "--data", data))
    model = condu / "food.safetensors"  # not a unified set: said first, whatever else is missing
    assert "expected a 'unified' checkpoint, found 'model'" in one_line_error(cli("route", model, "--data", data))
    only_two = tmp_path / "two"
    only_two.mkdir()
    for name in ("food", "mnist"):
        source = condu / f"{name}.prototypes.safetensors"
        (only_two / source.name).write_bytes(source.read_bytes())
    message = one_line_error(cli("route", unified, "--prototypes", str(only_two / "*"), "--data", data))
    assert "no prototypes of task(s) cars" in message and "--no-prototypes" in message
    other_base = tmp_path / "other" / "cars.prototypes.safetensors"
    other_base.parent.mkdir()
    with open_base("tiny") as weights:
        header = weights.header("prototypes", task="cars")
    header.base_sha256 = "0" * 64
    save_checkpoint(other_base, {"prototypes": torch.zeros(8, 128)}, header)
    message = one_line_error(
        cli("route", unified, "--prototypes", str(other_base), "--prototypes", str(only_two / "*"), "--data", data)
    )
    assert str(other_base) in message and "base" in message
    assert "has no task 'sun397'" in one_line_error(cli("route", unified, "--task", "sun397", "--data", data))
    assert "--top-k" in one_line_error(cli("route", unified, "--task", "food", "--top-k", "2", "--data", data))


def test_prototypes_holding_nan_are_refused_before_routing(cli, condu, toy_folders, tmp_path):
    folder = tmp_path / "protos"
    folder.mkdir()
    for name in TASKS:
        with open_checkpoint(condu / f"{name}.prototypes.safetensors") as ckpt:
            prototypes, header = ckpt["prototypes"].clone(), ckpt.header
        if name == "mnist":
            prototypes[1, 3] = float("nan")
        save_checkpoint(folder / f"{name}.prototypes.safetensors", {"prototypes": prototypes}, header)
    output = tmp_path / "routed.csv"
    result = cli(
        "route",
        condu / "unified.st",
        "--prototypes",
        str(folder / "*.prototypes.safetensors"),
        "--data",
        f"folder:{toy_folders['cars']}",
        "-o",
        output,
    )
    line = one_line_error(result)
    assert "mnist.prototypes.safetensors" in line and "NaN" in line
    assert not output.exists()


def test_route_checks_its_output_before_routing(cli, condu, toy_folders, tmp_path, monkeypatch):
    blocked = tmp_path / "runs"
    blocked.write_text("a file where the output folder should be")
    loaded = []
    monkeypatch.setattr("cftool.zoo.load_model", lambda *args: loaded.append(args))
    result = cli(
        "route",
        condu / "unified.st",
        "--task",
        "food",
        "--data",
        f"folder:{toy_folders['food']}",
        "-o",
        blocked / "routed.csv",
    )
    assert "routed.csv: cannot write" in one_line_error(result)
    assert loaded == []


@pytest.mark.parametrize("routing_flag", [("--top-k", "2"), ("--no-zero-shot",), ("--prototypes", "runs/*")])
def test_route_says_contradicting_flags_before_reading_any_file(cli, tmp_path, routing_flag):
    damaged = tmp_path / "session.st"
    damaged.write_bytes(b"not a safetensors file")
    result = cli("route", damaged, "--data", "toy:food", "--task", "food", *routing_flag)
    assert "--task answers with that task's expert alone" in one_line_error(result)
