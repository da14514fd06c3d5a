"""`cftool finetune`: the four methods end to end on tiny few-shot subsets, resume, DDP, feature cache, bad input."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error, torch_threads
from open_clip.model import CLIP
from PIL import Image
from safetensors.torch import load_file

from cftool.cli import main
from cftool.cli.common import rate
from cftool.data import DatasetSpec, load_task
from cftool.encode.text import context_prompts, embedded_context, encode_text_with_context
from cftool.encode.zero_shot import evaluate_zero_shot
from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.io.command_files import metrics_path, prototypes_path
from cftool.kinds.lora import lora_parameter_names
from cftool.kinds.prototypes import class_prototypes
from cftool.train import FinetuneJob, TrainingInterrupted, TrainOptions, finetune, state_path
from cftool.train.loop import BatchPlan, Ranks, learning_rate
from cftool.zoo import load_model

# 16 images of each of mnist's 5 base classes in batches of 40 (from 4 shots, every method overfits `tiny` below its
# zero-shot accuracy on the test images).
DATA = ["--zs", "tiny", "--data", "toy:mnist", "--classes", "base", "--shots", "16", "--device", "cpu"]
# Prototypes (a pass over the whole training split) only where a test reads them: "--prototypes" comes after.
TRAIN = ["--batch-size", "40", "--iterations", "12", "--seed", "3", "--no-prototypes"]
METHOD_FLAGS = {
    "coop": ["--lr", "0.05"],
    "head": ["--lr", "0.01"],
    "lora": ["--rank", "2", "--lr", "0.002", "--towers", "image"],
    "full": ["--lr", "0.0001", "--towers", "image"],
}
KINDS = {"coop": "prompt", "head": "head", "lora": "lora", "full": "model"}


pytestmark = pytest.mark.usefixtures("one_thread")


def finetune_cli(cli, output: Path, method: str, *extra) -> dict:
    result = cli("finetune", *DATA, *TRAIN, "--method", method, *METHOD_FLAGS[method], "-o", output, "--json", *extra)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with open_checkpoint(path) as ckpt:
        return ckpt.load_all()


def test_context_encoder_reproduces_encode_text_with_the_words_it_replaces():
    zoo = load_model("tiny")
    classnames = ["seven", "red circle", "arrow pointing up"]
    ctx = embedded_context(zoo.model, zoo.tokenizer, "a photo of a")
    with torch.no_grad():
        learned = encode_text_with_context(zoo.model, zoo.tokenizer(context_prompts(classnames, len(ctx))), ctx)
        written = zoo.model.encode_text(zoo.tokenizer([f"a photo of a {name}." for name in classnames]))
    assert ctx.shape == (4, zoo.model.token_embedding.weight.shape[1])
    assert torch.equal(learned, written)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each method trained once with `--eval`: its checkpoint and its JSON summary."""
    folder = tmp_path_factory.mktemp("trained")
    runs = {}
    with torch_threads(1):
        for method in METHOD_FLAGS:
            output = folder / f"{method}.safetensors"
            args = ["finetune", *DATA, *TRAIN, "--method", method, *METHOD_FLAGS[method], "-o", output, "--json"]
            args.append("--prototypes")
            with redirect_stdout(io.StringIO()) as stdout:
                assert main([str(arg) for arg in [*args, "--eval"]]) == 0
            runs[method] = output, json.loads(stdout.getvalue())
    return runs


@pytest.mark.parametrize("method", ["coop", "head", "lora", "full"])
def test_each_method_lowers_the_loss_and_writes_complete_metadata(trained, method):
    output, summary = trained[method]
    assert summary["final_loss"] < summary["first_loss"]
    assert summary["kind"] == KINDS[method] and summary["steps"] == 12

    with open_checkpoint(output, kind=KINDS[method]) as ckpt:
        header = ckpt.header
    assert (header.base, header.task, header.method) == ("tiny", "mnist", method)
    torch.manual_seed(3)  # the same base weights as the run's if `tiny` has no shipped weights and starts random
    assert header.base_sha256 == load_model("tiny").weights_sha256
    assert header.classnames == ["0", "1", "2", "3", "4"] and "{}" in header.template
    assert DatasetSpec(**header.config["data"]) == DatasetSpec("toy:mnist", classes="base", shots=16, seed=3)
    assert header.config["iterations"] == 12 and header.config["batch_size"] == 40 and header.config["seed"] == 3

    with open_checkpoint(summary["prototypes"], kind="prototypes") as ckpt:
        prototypes = ckpt["prototypes"]
        assert ckpt.header.classnames == header.classnames
    assert prototypes.shape == (5, 128)
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(5), atol=1e-5)


def test_no_prototypes_trains_the_same_checkpoint_and_leaves_no_prototypes_beside_it(cli, trained, tmp_path):
    output = tmp_path / "coop.safetensors"
    stale = prototypes_path(output)  # an older run's, which routing would take for this checkpoint's
    stale.write_bytes(prototypes_path(trained["coop"][0]).read_bytes())
    summary = finetune_cli(cli, output, "coop", "--no-prototypes")
    assert summary["prototypes"] is None and not stale.exists()
    assert Path(summary["metrics"]).is_file()
    written, reference = tensors(output), tensors(trained["coop"][0])  # the same run with prototypes: the same prompt
    assert written.keys() == reference.keys()
    assert all(torch.equal(written[name], reference[name]) for name in reference)


def test_every_method_beats_zero_shot_on_the_test_images_of_its_classes(trained):
    zoo = load_model("tiny")
    [zero_shot] = evaluate_zero_shot(zoo, [load_task(DatasetSpec("toy:mnist", classes="base"))])
    accuracies = {method: summary["test_accuracy"] for method, (_, summary) in trained.items()}
    assert all(accuracy > zero_shot.accuracy for accuracy in accuracies.values()), (zero_shot.accuracy, accuracies)


def test_eval_of_the_written_checkpoints_equals_their_accuracy_in_memory(cli, trained):
    # `full` first: the adapters after it must be applied to the base weights, not to the full fine-tune's.
    methods = ["full", "lora", "coop", "head"]
    paths = [trained[method][0] for method in methods]
    result = cli("eval", *paths, "--data", "toy:mnist", "--classes", "base", "--device", "cpu", "--seed", 3, "--json")
    assert result.code == 0, result.stderr
    for method, model in zip(methods, json.loads(result.stdout)["models"], strict=True):
        assert model["results"][0]["accuracy"] == trained[method][1]["test_accuracy"], method


def test_written_tensors_are_named_by_kind(trained):
    lora = tensors(trained["lora"][0])
    # tiny's image tower is a ViT: every block's attention (fused q/k/v and output projections) and MLP
    assert "visual.transformer.resblocks.0.attn.in_proj_weight.lora_A" in lora
    assert lora["visual.transformer.resblocks.3.attn.out_proj.weight.lora_B"].shape == (128, 2)
    assert lora["visual.transformer.resblocks.3.mlp.c_fc.weight.lora_B"].shape == (512, 2)
    assert not any(name.startswith("transformer.") for name in lora)  # --towers image
    config = open_checkpoint(trained["lora"][0]).header.config
    assert (config["rank"], config["alpha"], config["towers"]) == (2, 16.0, ["image"])
    assert tensors(trained["coop"][0])["ctx"].shape == (4, 128)
    assert tensors(trained["head"][0])["head.weight"].shape == (5, 128)


def test_feature_cache_gives_the_same_prompt_as_encoding_every_batch(cli, tmp_path, trained):
    cache = tmp_path / "cache"
    finetune_cli(cli, tmp_path / "cached.safetensors", "coop", "--cache-dir", cache)
    [cache_file] = cache.iterdir()
    written = cache_file.stat().st_mtime_ns
    finetune_cli(cli, tmp_path / "again.safetensors", "coop", "--cache-dir", cache)
    assert cache_file.stat().st_mtime_ns == written  # read back, not recomputed
    finetune_cli(cli, tmp_path / "uncached.safetensors", "coop", "--no-feature-cache")
    cached, again = tensors(tmp_path / "cached.safetensors"), tensors(tmp_path / "again.safetensors")
    uncached = tensors(tmp_path / "uncached.safetensors")
    assert torch.equal(cached["ctx"], again["ctx"])
    assert torch.equal(cached["ctx"], tensors(trained["coop"][0])["ctx"])  # a file cache holds the exact features
    assert torch.allclose(cached["ctx"], uncached["ctx"], atol=1e-5)


def test_the_whole_split_the_prototypes_see_is_cached_beside_the_shots(cli, tmp_path, trained):
    cache = tmp_path / "cache"
    first = finetune_cli(cli, tmp_path / "first.safetensors", "coop", "--cache-dir", cache, "--prototypes")
    files = {path: path.stat().st_mtime_ns for path in cache.iterdir()}
    sizes = sorted(len(load_file(path)["labels"]) for path in files)
    assert sizes == [80, len(load_task(DatasetSpec("toy:mnist", classes="base")).split("train"))]
    again = finetune_cli(cli, tmp_path / "again.safetensors", "coop", "--cache-dir", cache, "--prototypes")
    assert {path: path.stat().st_mtime_ns for path in cache.iterdir()} == files  # both read back, none recomputed
    reference = tensors(Path(trained["coop"][1]["prototypes"]))["prototypes"]  # the run without a cache
    for summary in (first, again):
        assert torch.equal(tensors(Path(summary["prototypes"]))["prototypes"], reference)


def test_the_feature_cache_is_not_reused_once_a_training_image_changes(cli, tmp_path):
    images = tmp_path / "shapes"
    for name, colour in (("circle", "red"), ("square", "blue")):
        (images / name).mkdir(parents=True)
        Image.new("RGB", (64, 64), colour).save(images / name / "0.png")
    cache = tmp_path / "cache"
    args = [
        "--zs",
        "tiny",
        "--data",
        f"folder:{images}",
        "--method",
        "coop",
        "--iterations",
        "1",
        "--device",
        "cpu",
        "--cache-dir",
        cache,
        "--force",
        "-o",
        tmp_path / "coop.safetensors",
    ]
    assert cli("finetune", *args).code == 0
    [first] = cache.iterdir()
    Image.new("RGB", (64, 64), "green").save(images / "square" / "0.png")
    os.utime(images / "square" / "0.png", ns=(1, 1))
    assert cli("finetune", *args).code == 0
    [second] = set(cache.iterdir()) - {first}
    old, new = load_file(first)["features"], load_file(second)["features"]
    assert torch.equal(old[0], new[0]) and not torch.allclose(old[1], new[1])


def test_a_yaml_config_is_equivalent_to_flags(cli, tmp_path, trained):
    config = tmp_path / "run.yaml"
    config.write_text(
        "zs: tiny\ndata: toy:mnist\nclasses: base\nshots: 16\ndevice: cpu\nbatch-size: 40\niterations: 12\n"
        "seed: 3\nmethod: head\nlr: 0.01\n"
    )
    result = cli("finetune", "--config", config, "-o", tmp_path / "yaml.safetensors")
    assert result.code == 0, result.stderr
    assert torch.equal(
        tensors(trained["head"][0])["head.weight"], tensors(tmp_path / "yaml.safetensors")["head.weight"]
    )


def _interrupt_at(step: int):
    """A progress reporter that presses Ctrl-C as the training loop reports ``step`` done; the loop notices at the
    end of the step it is then in."""

    def begin(description: str, total: int):
        seen = 0

        def advance(n: int = 1, **fields):
            nonlocal seen
            seen += n
            if description.startswith("train") and seen == step:
                os.kill(os.getpid(), signal.SIGINT)

        return advance

    return begin


@pytest.fixture(scope="module")
def interrupted_once(tmp_path_factory):
    """A `lora` run stopped by Ctrl-C after step 6 of 12 (state saved every 4 steps too), run once per module."""
    output = tmp_path_factory.mktemp("interrupted") / "resumed.safetensors"
    job = FinetuneJob(
        zs="tiny",
        data=DatasetSpec("toy:mnist", classes="base", shots=16, seed=3),
        method="lora",
        output=output,
        train=TrainOptions(iterations=12, batch_size=40, lr=0.002, optimizer="adamw", seed=3),
        method_options={"rank": 2, "alpha": 16.0, "towers": ("image",)},
        checkpoint_every=4,
    )
    with torch_threads(1), pytest.raises(TrainingInterrupted, match="after step 6 of 12"):
        finetune(job, progress=_interrupt_at(5))
    assert state_path(output).is_file() and not output.exists()
    return output


@pytest.fixture
def interrupted_run(interrupted_once, tmp_path):
    """What `interrupted_once` left, in this test's own folder: the output to resume and its trainer state."""
    for path in interrupted_once.parent.iterdir():
        shutil.copy2(path, tmp_path)
    return tmp_path / interrupted_once.name


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(cli, trained, interrupted_run):
    finetune_cli(cli, interrupted_run, "lora", "--resume")
    assert not state_path(interrupted_run).exists()
    resumed, straight = tensors(interrupted_run), tensors(trained["lora"][0])
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    # The steps before the interruption travelled in the trainer state: the metrics are the whole run's.
    resumed_rows, straight_rows = (
        [json.loads(line) for line in metrics_path(path).read_text().splitlines()]
        for path in (interrupted_run, trained["lora"][0])
    )
    assert [(row["step"], row["loss"]) for row in resumed_rows] == [(row["step"], row["loss"]) for row in straight_rows]


def test_resume_refuses_other_classes_another_base_or_changed_options(cli, tmp_path, interrupted_run):
    base = tmp_path / "other-base.safetensors"
    assert cli("export", "--zs", "tiny", "-o", base).code == 0
    with open_checkpoint(base) as ckpt:
        weights, header = ckpt.load_all(), ckpt.header
    weights["logit_scale"] = weights["logit_scale"] + 1
    save_checkpoint(base, weights, header, overwrite=True)

    def resume(*changes):
        args = [*DATA, *TRAIN, "--method", "lora", *METHOD_FLAGS["lora"], "-o", interrupted_run, "--resume"]
        for flag, value in zip(changes[::2], changes[1::2], strict=True):
            args[args.index(flag) + 1] = value
        return one_line_error(cli("finetune", *args))

    assert "classes" in resume("--classes", "novel")
    assert "base model" in resume("--zs", str(base))
    assert "lr" in resume("--lr", "0.5")
    assert not interrupted_run.exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda state: [1, 2, 3], "not a cftool trainer state"),
        (lambda state: {**state, "step": "6"}, "'step' missing or of the wrong type"),
        (lambda state: {**state, "step": 99}, "at step 99, outside this run's 0..12"),
        (lambda state: {**state, "trainable": {n: t[:1] for n, t in state["trainable"].items()}}, "not have the shape"),
        (lambda state: {**state, "optimizer": {"state": {}, "param_groups": []}}, "optimizer state does not fit"),
        (lambda state: {**state, "metrics": state["metrics"][:2]}, "metrics are not one row per step"),
    ],
)
def test_a_hand_edited_trainer_state_is_refused_in_one_line(cli, interrupted_run, edit, message):
    path = state_path(interrupted_run)
    torch.save(edit(torch.load(path, weights_only=True)), path)
    args = [*DATA, *TRAIN, "--method", "lora", *METHOD_FLAGS["lora"], "-o", interrupted_run, "--resume"]
    assert message in one_line_error(cli("finetune", *args))
    assert not interrupted_run.exists()


def test_bad_input_is_one_line_and_writes_nothing(cli, tmp_path):
    output = tmp_path / "out.safetensors"
    assert "'adapter' is not one of 'coop', 'head', 'lora', 'full'" in one_line_error(
        cli("finetune", *DATA, "--iterations", "1", "--method", "adapter", "-o", output)
    )
    assert "--rank applies to --method lora" in one_line_error(
        cli("finetune", *DATA, "--iterations", "1", "--rank", "4", "-o", output)
    )
    assert "--n-ctx 3 does not match" in one_line_error(
        cli("finetune", *DATA, "--iterations", "1", "--n-ctx", "3", "-o", output)
    )
    assert "--iterations N or --epochs N" in one_line_error(cli("finetune", *DATA, "-o", output))
    assert "--resume: no trainer state" in one_line_error(
        cli("finetune", *DATA, "--iterations", "1", "--resume", "-o", output)
    )

    images = tmp_path / "shapes"
    for name in ("circle", "square"):  # the square class stays empty
        (images / name).mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(images / "circle" / "0.png")
    line = one_line_error(
        cli(
            "finetune",
            "--zs",
            "tiny",
            "--data",
            f"folder:{images}",
            "--iterations",
            "1",
            "--device",
            "cpu",
            "-o",
            output,
        )
    )
    assert "no training images (square)" in line
    assert list(tmp_path.glob("out*")) == []

    output.write_bytes(b"precious")
    assert "--force" in one_line_error(cli("finetune", *DATA, "--iterations", "1", "-o", output))
    assert output.read_bytes() == b"precious" and list(tmp_path.glob("out.*")) == [output]


def test_a_head_is_refused_on_other_classes(cli, trained):
    line = one_line_error(
        cli(
            "eval",
            trained["head"][0],
            "--data",
            "toy:mnist",
            "--classes",
            "novel",
            "--device",
            "cpu",
            "--seed",
            3,
        )
    )
    assert "training classes" in line


def test_prototypes_follow_the_definition():
    features = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    text_head = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [embed_dim, n_classes]
    prototypes = class_prototypes(features, torch.tensor([0, 0, 1]), text_head)
    expected_first = F.normalize((torch.tensor([0.8, 0.4]) + torch.tensor([1.0, 0.0])) / 2, dim=0)
    assert torch.allclose(prototypes[0], expected_first)
    assert torch.allclose(prototypes[1], torch.tensor([0.0, 1.0]))


def test_two_gloo_processes_give_the_weights_of_one_process_with_the_same_global_batch(trained, tmp_path):
    args = [*DATA, *TRAIN, "--method", "lora", *METHOD_FLAGS["lora"], "--prototypes"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cftool"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "finetune", *args, "-o", str(tmp_path / "two.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = tensors(trained["lora"][0]), tensors(tmp_path / "two.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5), name
    assert open_checkpoint(tmp_path / "two.prototypes.safetensors").header.kind == "prototypes"


def test_epochs_count_steps_of_the_global_batch_and_the_schedule_warms_up_then_decays(cli, tmp_path):
    result = cli(
        "finetune",
        *DATA,
        "--method",
        "head",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--warmup",
        "2",
        "--label-smoothing",
        "0.1",
        "-o",
        tmp_path / "head.safetensors",
        "--json",
    )
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 5  # ceil(2 epochs × 80 images / 32)
    options = TrainOptions(iterations=10, lr=1.0, warmup=2)
    rates = [learning_rate(options, step, 10, n_images=20) for step in range(10)]
    assert rates[:3] == [0.5, 1.0, 1.0]  # linear warm-up over 2 steps, then the cosine starts at the peak
    assert all(later < earlier for earlier, later in pairwise(rates[2:])) and rates[-1] < 0.05


def test_batches_are_a_function_of_seed_and_step_and_cover_every_image_once_per_epoch():
    plan = BatchPlan(12, 4, seed=5)
    epoch = torch.cat([plan.global_batch(step) for step in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))
    assert torch.equal(BatchPlan(12, 4, seed=5).global_batch(4), plan.global_batch(4))  # resumed mid-stream
    assert not torch.equal(BatchPlan(12, 4, seed=6).global_batch(0), plan.global_batch(0))
    halves = Ranks(0, 2).local(plan.global_batch(7)), Ranks(1, 2).local(plan.global_batch(7))
    assert torch.equal(torch.cat(halves), plan.global_batch(7))


def test_help_has_an_example(cli):
    result = cli("finetune", "--help")
    assert result.code == 0 and "Example: cftool finetune" in result.stdout


@pytest.mark.parametrize(
    ("vision", "expected"),
    [
        (
            {"layers": 2, "width": 64, "patch_size": 16},
            {
                f"visual.transformer.resblocks.{i}.{target}"
                for i in range(2)
                for target in ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
            },
        ),
        ({"layers": [1, 1, 1, 1], "width": 16}, {f"visual.attnpool.{p}_proj.weight" for p in "qkvc"}),
    ],
)
def test_lora_adapts_the_attention_of_transformer_and_resnet_image_towers(vision, expected):
    model = CLIP(
        32, {"image_size": 64, **vision}, {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
    )
    assert set(lora_parameter_names(model, ("image",))) == expected
    text = lora_parameter_names(model, ("text",))
    assert len(text) == 4 and all(name.startswith("transformer.resblocks.0.") for name in text)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "nan"], "--lr must be a finite positive number"),
        (["--lr", "-0.1"], "--lr must be a finite positive number"),
        (["--lr", "inf"], "--lr must be a finite positive number"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number ≥ 0"),
        (["--epochs", "inf"], "must be positive (and finite)"),
        (["--seed", str(2**64)], "--seed must be within"),
        (["--batch-size", "1000000000"], "GiB, more than this machine's"),
    ],
)
def test_numbers_are_validated_where_options_are_built(cli, tmp_path, flags, message):
    run = ["finetune", *DATA, "-o", tmp_path / "out.safetensors", *flags]
    if "--epochs" not in flags:
        run += ["--iterations", "1"]
    assert message in one_line_error(cli(*run))
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_loss_stops_training_in_one_line_and_writes_nothing(cli, tmp_path):
    output = tmp_path / "out.safetensors"
    error = one_line_error(
        cli(
            "finetune",
            *DATA,
            "--method",
            "coop",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--iterations",
            "5",
            "-o",
            output,
        )
    )
    assert "training diverged and nothing was written" in error
    assert list(tmp_path.iterdir()) == []


def test_lora_alpha_zero_is_recorded_as_given(cli, tmp_path):
    from cftool.io.checkpoint import open_checkpoint

    output = tmp_path / "lora.safetensors"
    assert cli("finetune", *DATA, "--method", "lora", "--alpha", "0", "--iterations", "1", "-o", output).code == 0
    with open_checkpoint(output) as ckpt:
        assert ckpt.header.config["alpha"] == 0


def test_a_hand_edited_lora_file_is_refused_in_one_line(cli, tmp_path):
    import dataclasses

    from cftool.io.checkpoint import open_checkpoint, save_checkpoint

    lora = tmp_path / "lora.safetensors"
    assert cli("finetune", *DATA, "--method", "lora", "--rank", "2", "--iterations", "1", "-o", lora).code == 0
    with open_checkpoint(lora) as ckpt:
        tensors, header = ckpt.load_all(), ckpt.header
    first = next(iter(tensors))
    edits = {
        "rank is 'x', not a positive integer": (tensors, {"rank": "x"}),
        "alpha is nan, not a finite number": (tensors, {"alpha": float("nan")}),
        "targets is not a list of weight names": (tensors, {"targets": "all"}),
        "not [2, in] and [out, 2]": ({**tensors, first: torch.zeros(3, tensors[first].shape[1])}, {}),
    }
    for message, (edited, config) in edits.items():
        bad = tmp_path / "bad.safetensors"
        save_checkpoint(bad, edited, dataclasses.replace(header, config={**header.config, **config}), overwrite=True)
        assert message in one_line_error(cli("eval", bad, "--data", "toy:mnist")), message


@pytest.mark.parametrize(
    "tamper",
    [
        lambda f: {**f, "features": f["features"][:, :3].contiguous()},  # another width
        lambda f: {**f, "features": f["features"][:-1].contiguous()},  # a row short
        lambda f: {**f, "features": torch.full_like(f["features"], float("nan"))},
        lambda f: {**f, "features": f["features"].half()},
        lambda f: {"labels": f["labels"]},
    ],
)
def test_a_tampered_feature_cache_is_recomputed_not_trusted(cli, tmp_path, tamper):
    from safetensors.torch import save_file

    cache = tmp_path / "cache"
    finetune_cli(cli, tmp_path / "first.safetensors", "coop", "--cache-dir", cache)
    [cache_file] = cache.iterdir()
    honest = load_file(cache_file)
    save_file(tamper(honest), cache_file)
    finetune_cli(cli, tmp_path / "second.safetensors", "coop", "--cache-dir", cache)
    assert torch.equal(tensors(tmp_path / "first.safetensors")["ctx"], tensors(tmp_path / "second.safetensors")["ctx"])
    assert torch.equal(load_file(cache_file)["features"], honest["features"])  # replaced by the true features


def test_a_run_logged_to_a_file_prints_progress_lines_and_writes_one_metrics_row_per_step(cli, tmp_path):
    output = tmp_path / "logged.safetensors"
    args = [*DATA, "--batch-size", "80", "--iterations", "200", *METHOD_FLAGS["coop"], "-o", output, "--json"]
    result = cli("finetune", *args)  # stderr captured: not a terminal, as under `2> log`, nohup or sbatch
    assert result.code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "" not in lines and "\x1b" not in result.stderr  # no blank line, no bar
    progress = [line for line in lines[:-1] if line.startswith("train coop (cross-entropy): step ")]
    assert [line.split(",")[0].split()[-1] for line in progress] == ["50/200", "100/200", "150/200", "200/200"]
    assert all(" img/s, " in line for line in progress) and "ETA" in progress[0]
    assert lines[-1].startswith("mnist: 200 steps, loss ")

    summary = json.loads(result.stdout)
    rows = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines()]
    assert Path(summary["metrics"]) == tmp_path / "logged.metrics.jsonl"
    assert [row["step"] for row in rows] == list(range(1, 201))
    assert rows[0].keys() == {"step", "epoch", "lr", "ce", "loss", "images_per_second", "elapsed_s"}
    assert [row["epoch"] for row in rows] == list(range(1, 201))  # one batch is the whole training set
    assert rows[0]["lr"] == 0.05 and rows[-1]["lr"] < 1e-5  # the cosine from its peak to (almost) zero
    assert all(row["ce"] == row["loss"] for row in rows)
    assert (rows[0]["loss"], rows[-1]["loss"]) == (summary["first_loss"], summary["final_loss"])
    assert all(row["images_per_second"] > 0 for row in rows)
    assert all(a["elapsed_s"] < b["elapsed_s"] for a, b in pairwise(rows))

    assert "--force" in one_line_error(cli("finetune", *args))  # a complete run's files are kept...
    output.unlink()  # ...but metrics a killed run left without their checkpoint do not block the rerun
    assert cli("finetune", *args, "--log-every", "100").code == 0


def test_a_one_step_run_reads_as_one_step(cli, tmp_path):
    output = tmp_path / "one.safetensors"
    result = cli("finetune", *DATA, "--iterations", "1", *METHOD_FLAGS["coop"], "-o", output, "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    [line] = result.stderr.splitlines()
    speed = rate(summary["images_per_second"])
    assert line.startswith(f"mnist: 1 step, loss {summary['first_loss']:.4f}, {speed} img/s;")
    assert [rate(x) for x in (0.4123, 41.23, 2585.4)] == ["0.412", "41.2", "2,585"]  # a ViT-B/16 step on a CPU: not 0
