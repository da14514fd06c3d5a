"""`cftool eval` over checkpoint sets (per-task patterns, seeds, folders, base-to-novel), `eval --path` and
`cftool interpolate`."""

import json
import statistics
import sys
from pathlib import Path

import pytest
from conftest import one_line_error, torch_threads

from cftool.cli import main

DATA = ["--zs", "tiny", "--classes", "base", "--shots", "4", "--device", "cpu", "--batch-size", "20"]
FINETUNE = [*DATA, "--no-prototypes"]  # no test here routes
TASKS = ("mnist", "flowers")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """CoOp prompts on the base classes of two tasks for seeds 0 and 1, as runs/seed{seed}/{task}/coop.safetensors,
    and a lora, a full and a head fine-tune of mnist."""
    root = tmp_path_factory.mktemp("runs")
    with torch_threads(1):
        for seed in (0, 1):
            for task in TASKS:
                output = root / f"seed{seed}" / task / "coop.safetensors"
                args = [
                    "finetune",
                    *FINETUNE,
                    "--data",
                    f"toy:{task}",
                    "--method",
                    "coop",
                    "--lr",
                    "0.05",
                    "--iterations",
                    "5",
                    "--seed",
                    str(seed),
                    "-o",
                    output,
                ]
                assert main([str(a) for a in args]) == 0
        for method, flags in (
            ("lora", ["--rank", "2", "--lr", "0.002", "--towers", "image"]),
            ("full", ["--lr", "0.0001", "--towers", "image"]),
            ("head", ["--lr", "0.01"]),
        ):
            args = [
                "finetune",
                *FINETUNE,
                "--data",
                "toy:mnist",
                "--method",
                method,
                *flags,
                "--iterations",
                "3",
                "-o",
                root / f"{method}.safetensors",
            ]
            assert main([str(a) for a in args]) == 0
    return root


def evaluate(cli, *args) -> dict:
    result = cli("eval", *args, "--device", "cpu", "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def accuracy(cli, checkpoint, task, classes="base") -> float:
    report = evaluate(cli, checkpoint, "--data", f"toy:{task}", "--classes", classes)
    return report["models"][0]["results"][0]["accuracy"]


def test_a_task_pattern_gives_each_task_its_own_checkpoint(cli, runs):
    report = evaluate(
        cli,
        "zs",
        str(runs / "seed0/{task}/coop.safetensors"),
        *[f"--data=toy:{task}" for task in TASKS],
        "--classes",
        "base",
        "--zs",
        "tiny",
    )
    zero_shot, coop = report["models"]
    assert zero_shot["model"] == "zero-shot" and zero_shot["files"] is None
    for row, task in zip(coop["results"], TASKS, strict=True):
        assert row["task"] == task
        assert row["accuracy"] == accuracy(cli, runs / "seed0" / task / "coop.safetensors", task)
    assert coop["mean"]["accuracy"] == pytest.approx(sum(r["accuracy"] for r in coop["results"]) / 2)


def test_a_seed_pattern_averages_the_seeds_and_reports_their_spread(cli, runs):
    pattern = str(runs / "seed{seed}" / "{task}" / "coop.safetensors")
    report = evaluate(cli, pattern, *[f"--data=toy:{task}" for task in TASKS], "--classes", "base,novel")
    [model] = report["models"]
    assert model["seeds"] == ["0", "1"]
    for row in model["results"]:
        per_seed = {
            half: [
                accuracy(cli, runs / f"seed{s}" / row["task"] / "coop.safetensors", row["task"], half) for s in (0, 1)
            ]
            for half in ("base", "novel")
        }
        assert row["per_seed"]["base"] == per_seed["base"] and row["per_seed"]["novel"] == per_seed["novel"]
        assert row["base"] == pytest.approx(sum(per_seed["base"]) / 2)
        assert row["std"]["base"] == pytest.approx(statistics.stdev(per_seed["base"]))
        # HM as the papers report it: that of the seed-averaged base and novel accuracies.
        assert row["hm"] == pytest.approx(2 * row["base"] * row["novel"] / (row["base"] + row["novel"]))
    mean = model["mean"]
    assert mean["base"] == pytest.approx(sum(r["base"] for r in model["results"]) / 2)
    assert mean["hm"] == pytest.approx(2 * mean["base"] * mean["novel"] / (mean["base"] + mean["novel"]))


def test_a_folder_column_finds_each_tasks_checkpoint_by_its_metadata(cli, runs):
    report = evaluate(cli, str(runs / "seed1" / "mnist"), "--data", "toy:mnist", "--classes", "base")
    assert report["models"][0]["files"] == {"mnist": [str(runs / "seed1" / "mnist" / "coop.safetensors")]}


def test_eval_without_data_names_the_data_a_checkpoint_was_trained_on(cli, runs):
    coop = runs / "seed0" / "mnist" / "coop.safetensors"
    line = one_line_error(cli("eval", "zs", coop))
    assert line.endswith(
        f"{coop} was trained on --data toy:mnist --classes base: add --data toy:mnist --classes base,novel"
    )
    assert one_line_error(cli("eval", "zs")).endswith("or --benchmark NAME")


def test_missing_checkpoints_of_a_pattern_are_one_line(cli, runs):
    pattern = str(runs / "seed0" / "{task}" / "coop.safetensors")
    line = one_line_error(cli("eval", pattern, "--data", "toy:mnist", "--data", "toy:dtd", "--zs", "tiny"))
    assert "'dtd'" in line and "dtd/coop.safetensors" in line
    line = one_line_error(cli("eval", str(runs), "--data", "toy:mnist", "--zs", "tiny"))
    assert "several checkpoints of task 'mnist'" in line
    line = one_line_error(cli("eval", str(runs / "seed0" / "mnist"), "--data", "toy:dtd", "--zs", "tiny"))
    assert "no checkpoint of task(s) dtd" in line


def test_the_path_from_zero_shot_to_a_prompt_starts_at_zero_shot_and_ends_at_the_prompt(cli, runs, tmp_path):
    prompt = runs / "seed0" / "mnist" / "coop.safetensors"
    plot = tmp_path / "path.png"
    named = ["--path", "zs", f"coop={prompt}"]  # LABEL=FILE: the table, the report and the plot say coop
    report = evaluate(cli, *named, "--data", "toy:mnist", "--classes", "base,novel", "--steps", "5", "--plot", plot)
    assert report["path"] == {"a": "zs", "b": "coop", "kind": "prompt", "files": {"a": None, "b": str(prompt)}}
    assert report["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    base, novel = report["curves"]
    assert (base["classes"], novel["classes"]) == ("base", "novel")
    zero_shot = evaluate(cli, "--zs", "tiny", "--data", "toy:mnist", "--classes", "base")["models"][0]["results"][0]
    assert base["accuracy"][0] == pytest.approx(zero_shot["accuracy"])
    assert base["accuracy"][-1] == pytest.approx(accuracy(cli, prompt, "mnist"))
    assert novel["accuracy"][-1] == pytest.approx(accuracy(cli, prompt, "mnist", "novel"))
    assert base["max_loss"] == max(base["loss"]) and base["barrier"] >= 0 and base["barrier_alpha"] in report["alphas"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_weight_path_re_encodes_the_images_at_every_point(cli, runs):
    report = evaluate(
        cli, "--path", "zs", runs / "full.safetensors", "--data", "toy:mnist", "--classes", "base", "--steps", "3"
    )
    [curve] = report["curves"]
    assert report["path"]["kind"] == "model" and report["path"]["b"] == str(runs / "full.safetensors")  # no label
    assert curve["accuracy"][-1] == pytest.approx(accuracy(cli, runs / "full.safetensors", "mnist"))
    zero_shot = evaluate(cli, "--zs", "tiny", "--data", "toy:mnist", "--classes", "base")["models"][0]["results"][0]
    assert curve["accuracy"][0] == pytest.approx(zero_shot["accuracy"])


def test_plot_without_matplotlib_says_how_to_install_it(cli, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = one_line_error(
        cli(
            "eval",
            "--path",
            "zs",
            runs / "seed0/mnist/coop.safetensors",
            "--data",
            "toy:mnist",
            "--plot",
            tmp_path / "p.png",
        )
    )
    assert "pip install 'cftool-clip[plot]'" in line
    assert not (tmp_path / "p.png").exists()


def test_paths_join_checkpoints_of_one_kind(cli, runs):
    line = one_line_error(
        cli("eval", "--path", runs / "lora.safetensors", runs / "seed0/mnist/coop.safetensors", "--data", "toy:mnist")
    )
    assert "'lora'" in line and "'prompt'" in line
    assert "both ends" in one_line_error(cli("eval", "--path", "zs", "zs", "--data", "toy:mnist", "--zs", "tiny"))


@pytest.mark.parametrize(
    "end", ["seed0/mnist/coop.safetensors", "head.safetensors", "lora.safetensors", "full.safetensors"]
)
def test_an_interpolated_checkpoint_scores_as_its_point_on_the_path(cli, runs, tmp_path, end):
    output = tmp_path / "mixed.safetensors"
    result = cli("interpolate", "zs", runs / end, "--alpha", "0.5", "-o", output)
    assert result.code == 0, result.stderr
    report = evaluate(cli, "--path", "zs", runs / end, "--data", "toy:mnist", "--classes", "base", "--steps", "3")
    assert accuracy(cli, output, "mnist") == pytest.approx(report["curves"][0]["accuracy"][1])


def test_two_loras_interpolate_exactly_into_one_of_twice_the_rank(cli, runs, tmp_path):
    from cftool.io.checkpoint import open_checkpoint

    lora = runs / "lora.safetensors"
    output = tmp_path / "lora-lora.safetensors"
    assert cli("interpolate", lora, lora, "--alpha", "0.3", "-o", output).code == 0
    with open_checkpoint(output, kind="lora") as mixed, open_checkpoint(lora) as single:
        assert mixed.header.config["rank"] == 2 * single.header.config["rank"]
    assert accuracy(cli, output, "mnist") == accuracy(cli, lora, "mnist")


def test_interpolate_refuses_two_prompts_and_its_own_input(cli, runs, tmp_path):
    prompt = runs / "seed0/mnist/coop.safetensors"
    assert "eval --path" in one_line_error(
        cli("interpolate", prompt, prompt, "--alpha", "0.5", "-o", tmp_path / "x.safetensors")
    )
    assert "inputs" in one_line_error(cli("interpolate", "zs", prompt, "--alpha", "0.5", "-o", prompt, "--force"))


def test_prompts_on_one_dataset_share_one_encoding_of_its_images_in_memory_and_through_cache_dir(
    cli, runs, tmp_path, monkeypatch
):
    import open_clip

    from cftool.data import DatasetSpec, load_task

    calls = []
    encode = open_clip.CLIP.encode_image

    def counted(self, images, *args, **kwargs):
        calls.append(len(images))
        return encode(self, images, *args, **kwargs)

    monkeypatch.setattr(open_clip.CLIP, "encode_image", counted)
    prompts = [runs / f"seed{seed}" / "mnist" / "coop.safetensors" for seed in (0, 1)]
    args = ["zs", *prompts, runs / "head.safetensors", "--data", "toy:mnist", "--classes", "base"]
    first = evaluate(cli, *args, "--cache-dir", tmp_path / "features")
    n_images = len(load_task(DatasetSpec("toy:mnist", classes="base")).split("test"))
    assert len(first["models"]) == 4 and sum(calls) == n_images  # four columns, the images encoded once
    calls.clear()
    again = evaluate(cli, *args, "--cache-dir", tmp_path / "features")
    assert calls == []  # the next run reads them back
    assert [m["results"] for m in again["models"]] == [m["results"] for m in first["models"]]
    calls.clear()
    evaluate(cli, runs / "full.safetensors", *args[1:])
    assert sum(calls) == 2 * n_images  # a full fine-tune has its own image tower: its images are encoded again


def test_eval_logged_to_a_file_prints_a_line_every_log_every_batches(cli, toy_folders):
    data = f"folder:{toy_folders['food']}"  # 6 test images per class
    result = cli("eval", "--zs", "tiny", "--data", data, "--batch-size", "4", "--log-every", "3", "--json")
    assert result.code == 0, result.stderr
    images = json.loads(result.stdout)["models"][0]["results"][0]["num_images"]
    lines = result.stderr.splitlines()
    assert "" not in lines and "\x1b" not in result.stderr  # no blank line, no bar
    progress = [line for line in lines if line.startswith("encode images: ")]
    batches = -(-images // 4)
    expected = [f"encode images: {min(4 * k, images)} images" for k in range(3, batches + 1, 3)]
    assert len(expected) >= 3 and [line.split(",")[0] for line in progress] == expected
    assert all(" img/s, elapsed " in line for line in progress)


def test_heads_of_many_prompts_are_encoded_in_bounded_passes_equal_to_one_batch(monkeypatch):
    """The zero-shot head (which route's heads, the union's and MergeTune's anchor are made of) and the prototypes'
    template means never pass more than PROMPTS_PER_PASS prompts through the text tower at once, and equal the
    head open_clip makes of every class × template prompt in one batch."""
    import open_clip
    import torch

    import cftool.encode.zero_shot
    from cftool.encode.zero_shot import class_text_means, zero_shot_head
    from cftool.kinds.method import zero_shot_class_features
    from cftool.zoo import load_model

    zoo = load_model("tiny")
    classnames = ["circle", "square", "triangle", "star", "cross", "ring", "heart"]
    templates = ["a photo of a {}.", "a drawing of a {}.", "{}"]
    with torch.no_grad():
        one_batch = open_clip.build_zero_shot_classifier(zoo.model, zoo.tokenizer, classnames, templates, None)
        tokens = zoo.tokenizer([t.format(name) for name in classnames for t in templates])
        means = zoo.model.encode_text(tokens, normalize=True).reshape(len(classnames), len(templates), -1).mean(1).T
    passes, encode_text = [], zoo.model.encode_text
    monkeypatch.setattr(zoo.model, "encode_text", lambda t, **kw: passes.append(len(t)) or encode_text(t, **kw))
    monkeypatch.setattr(cftool.encode.zero_shot, "PROMPTS_PER_PASS", 4)
    assert (zero_shot_head(zoo, classnames, templates) - one_batch).abs().max() <= 1e-6
    assert (zero_shot_class_features(zoo, classnames, templates) - one_batch.T).abs().max() <= 1e-6
    assert (class_text_means(zoo, classnames, templates).T - means).abs().max() <= 1e-6
    assert max(passes) == 4 and sum(passes) == 3 * len(classnames) * len(templates)


def counted(encode, passes: list[int]):
    """``encode_text_with_context`` that records how many prompts each pass encodes."""

    def encode_counted(model, tokens, ctx):
        passes.append(len(tokens))
        return encode(model, tokens, ctx)

    return encode_counted


def test_a_prompts_head_is_encoded_in_bounded_passes_equal_to_one_batch(monkeypatch):
    """A CoOp prompt's head (shared or class-specific context) over many classes, a few classes per pass."""
    import torch

    import cftool.kinds.prompt
    from cftool.kinds.apply import build_method
    from cftool.zoo import load_model

    zoo = load_model("tiny")
    classnames = ["circle", "square", "triangle", "star", "cross", "ring", "heart"]
    for class_specific in (False, True):
        torch.manual_seed(0)
        prompt = build_method(
            "coop", zoo, classnames, ["{}"], n_ctx=4, ctx_init="random", class_specific=class_specific
        )
        with torch.no_grad():
            one_batch = torch.nn.functional.normalize(prompt.unnormalised_class_features(prompt.tokens), dim=-1).T
        passes, encode = [], cftool.kinds.prompt.encode_text_with_context
        monkeypatch.setattr(cftool.kinds.prompt, "PROMPTS_PER_PASS", 3)
        monkeypatch.setattr(cftool.kinds.prompt, "encode_text_with_context", counted(encode, passes))
        assert (prompt.eval_head(zoo, classnames, []) - one_batch).abs().max() <= 1e-6
        assert passes == [3, 3, 1]
        monkeypatch.undo()


def test_the_base_weights_are_copied_only_for_checkpoints_that_replace_them(runs):
    """A prompt or a head leaves the encoders alone: nothing is copied. A full fine-tune replaces them: the base is
    copied before, and restored after, exactly."""
    import torch

    from cftool.io.checkpoint import open_checkpoint
    from cftool.kinds.apply import BaseState, applied
    from cftool.zoo import load_model

    zoo = load_model("tiny")
    before = {name: tensor.clone() for name, tensor in zoo.model.state_dict().items()}
    base_state = BaseState(zoo)
    for path in (runs / "seed0" / TASKS[0] / "coop.safetensors", runs / "head.safetensors"):
        with open_checkpoint(path) as ckpt, applied(zoo, ckpt, base_state, "mnist") as (_, base_weights):
            assert base_weights
    assert base_state._copy is None
    with open_checkpoint(runs / "full.safetensors") as ckpt, applied(zoo, ckpt, base_state, "mnist") as (_, same):
        assert not same
        assert any(not torch.equal(zoo.model.state_dict()[n], before[n]) for n in before)
    assert all(torch.equal(zoo.model.state_dict()[name], before[name]) for name in before)
