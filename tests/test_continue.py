"""`cftool continue` (MergeTune): the objective against docs/design.md §5.1 by hand, the command end to end on every
kind, its metadata, round trips through eval, resume, DDP and bad input."""

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error, torch_threads
from test_finetune import DATA, KINDS, METHOD_FLAGS, _interrupt_at

from cftool.cli import main
from cftool.encode.text import mean_per_class
from cftool.io.checkpoint import Header, open_checkpoint, save_checkpoint
from cftool.io.command_files import metrics_path
from cftool.kinds.head import LinearHead
from cftool.kinds.lora import LoRA
from cftool.kinds.method import zero_shot_class_features
from cftool.kinds.model import Full
from cftool.kinds.prompt import CoOp
from cftool.merge.lora import merge_lora
from cftool.train import TrainingInterrupted, state_path
from cftool.train.continued import ContinueJob, continue_training
from cftool.train.objectives import MergeTune, MergeTuneOptions, ZeroShotPoint, parse_lmc_samples
from cftool.zoo import load_model

CLASSES = ["0", "1", "2"]
TEMPLATES = ["a photo of the number {}.", "the digit {}"]
TRAIN = ["--batch-size", "20", "--iterations", "6", "--seed", "3"]
# Prototypes (a pass over the whole training split) only where a test reads them: "--prototypes" comes after.
CONTINUE = ["--iterations", "4", "--lambda-zs", "1", "--lmc-samples", "0.5,1.0", "--no-prototypes"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory) -> dict[str, Path]:
    """Each method fine-tuned briefly on 4 shots of mnist's base classes."""
    folder = tmp_path_factory.mktemp("fine-tuned")
    paths = {}
    with torch_threads(1):
        for method in METHOD_FLAGS:
            paths[method] = folder / f"{method}.safetensors"
            args = ["finetune", *DATA, *TRAIN, "--method", method, *METHOD_FLAGS[method], "-o", paths[method]]
            if method != "coop":  # coop's prototypes are an input `continue` must refuse
                args.append("--no-prototypes")
            assert main([str(arg) for arg in args]) == 0
    return paths


def _cross_entropy(scale, features, weight, labels):
    return F.cross_entropy(scale * features @ weight.T, labels)


def test_the_objective_of_a_head_equals_design_5_1_by_hand():
    zoo = load_model("tiny")
    method = LinearHead(zoo, CLASSES, TEMPLATES)
    zero_shot_weight = method.head.weight.detach().clone()  # a fresh head is the zero-shot head
    zero_shot = ZeroShotPoint.of(method, zero_shot_class_features(zoo, CLASSES, TEMPLATES))
    generator = torch.Generator().manual_seed(0)
    fine_tuned = zero_shot_weight + 0.1 * torch.randn(zero_shot_weight.shape, generator=generator)
    with torch.no_grad():
        method.head.weight.copy_(fine_tuned)
    options = MergeTuneOptions(lambda_lmc=0.7, lambda_zs=2.0, zs_reg="param", lmc_samples=(0.25, 0.5, 1.0))
    by_param = MergeTune(method, zero_shot, options)
    by_feature = MergeTune(method, zero_shot, replace(options, zs_reg="feature"))
    current = fine_tuned + 0.05 * torch.randn(fine_tuned.shape, generator=generator)
    with torch.no_grad():
        method.head.weight.copy_(current)

    features = F.normalize(torch.randn(6, current.shape[1], generator=generator), dim=-1)
    labels = torch.tensor([0, 2, 1, 0, 1, 2])
    scale = zoo.model.logit_scale.exp().item()
    task = _cross_entropy(scale, features, current, labels)
    path = sum(_cross_entropy(scale, features, (1 - a) * fine_tuned + a * current, labels) for a in (0.25, 0.5, 1.0))
    expected_param = task + 0.7 * path / 3 + 2.0 * ((current - zero_shot_weight) ** 2).sum()
    cosine = F.cosine_similarity(F.normalize(current, dim=-1), zero_shot_weight, dim=-1).mean()
    expected_feature = task + 0.7 * path / 3 + 2.0 * (1 - cosine)
    assert torch.allclose(by_param(features, labels), expected_param, atol=1e-5)
    assert torch.allclose(by_feature(features, labels), expected_feature, atol=1e-5)


def test_the_objective_of_a_prompt_interpolates_unnormalised_class_features_and_uses_the_zero_shot_head():
    zoo = load_model("tiny")
    method = CoOp(zoo, CLASSES, TEMPLATES)
    zero_shot_head = zero_shot_class_features(zoo, CLASSES, TEMPLATES)
    zero_shot = ZeroShotPoint.of(method, zero_shot_head)
    hand_written = method.ctx.detach().clone()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        method.ctx.add_(0.2 * torch.randn(method.ctx.shape, generator=generator))
        fine_tuned = method.unnormalised_class_features(method.tokens)
    options = MergeTuneOptions(lambda_lmc=1.5, lambda_zs=3.0, zs_reg="feature", lmc_samples=(0.5, 1.0))
    objective = MergeTune(method, zero_shot, options)
    param_objective = MergeTune(method, zero_shot, replace(options, zs_reg="param"))
    with torch.no_grad():
        method.ctx.add_(0.2 * torch.randn(method.ctx.shape, generator=generator))
        current_raw = method.unnormalised_class_features(method.tokens)
        current = F.normalize(current_raw, dim=-1)

    features = F.normalize(torch.randn(5, current.shape[1], generator=generator), dim=-1)
    labels = torch.tensor([0, 1, 2, 2, 1])
    scale = zoo.model.logit_scale.exp().item()
    task = _cross_entropy(scale, features, current, labels)
    midpoint = _cross_entropy(scale, features, F.normalize((fine_tuned + current_raw) / 2, dim=-1), labels)
    cosine = F.cosine_similarity(current, zero_shot_head, dim=-1).mean()
    path = 1.5 * (midpoint + task) / 2
    with torch.no_grad():
        assert torch.allclose(objective(features, labels), task + path + 3.0 * (1 - cosine), atol=1e-5)
        distance = ((method.ctx - hand_written) ** 2).sum()
        assert torch.allclose(param_objective(features, labels), task + path + 3.0 * distance, atol=1e-5)


def _point_weights(method, point):
    """The model weights a path point stands for: a LoRA point's factors merged into the base weights."""
    if not isinstance(method, LoRA):
        return point
    base = load_model("tiny").model.state_dict()
    scale = method.alpha / method.rank
    return {
        name: merge_lora(
            base[name].to(point[f"{name}.lora_A"].dtype), point[f"{name}.lora_A"], point[f"{name}.lora_B"], scale
        )
        for name in method.targets
    }


@pytest.mark.parametrize("method_class", [LoRA, Full])
def test_weight_methods_score_a_path_point_as_a_model_holding_those_weights(method_class):
    """logits_at(a path point) is the model with the point's weights, and sends gradients to the trained tensors."""
    options = {"towers": ("image", "text")} | ({"rank": 2} if method_class is LoRA else {})
    method = method_class(load_model("tiny"), CLASSES, TEMPLATES, **options)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in method.trainable_parameters().values():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    start = {name: t.detach().clone() for name, t in method.solution().items()}
    with torch.no_grad():
        for parameter in method.trainable_parameters().values():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    images = torch.randn(2, 3, 64, 64, generator=generator)
    point = method.path_point(start, method.solution(), 0.3)
    logits = method.logits_at(images, point)
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.trainable_parameters().values())

    reference = Full(load_model("tiny"), CLASSES, TEMPLATES)
    state = reference.model.state_dict()
    state.update({name: weight.detach() for name, weight in _point_weights(method, point).items()})
    reference.model.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(logits, reference(images), atol=1e-4)


@pytest.mark.parametrize("zs_reg", ["param", "feature"])
def test_a_lora_continuation_computed_from_factors_equals_it_on_materialised_weights(zs_reg):
    """MergeTune on a LoRA scores path points and measures the distance to zero-shot from factors, never merging
    every layer's weights at once; its loss and gradients are those of the same objective over the merged weights
    ``W + s·B A`` themselves (interpolated, scored by the plain model, ‖W − W_zs‖²)."""
    zoo = load_model("tiny")
    zoo.model.double()
    method = LoRA(zoo, CLASSES, TEMPLATES, rank=2, lora_init="condu").double()  # condu: the zero-shot B is not 0
    zero_shot = ZeroShotPoint.of(method, zero_shot_class_features(zoo, CLASSES, TEMPLATES).double())
    generator = torch.Generator().manual_seed(4)

    def step_factors():
        with torch.no_grad():
            for parameter in method.trainable_parameters().values():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))

    step_factors()
    options = MergeTuneOptions(lambda_lmc=1.5, lambda_zs=3.0, zs_reg=zs_reg, lmc_samples=(0.3, 0.8, 1.0))
    objective = MergeTune(method, zero_shot, options)  # ŵ2: the factors now
    start = _point_weights(method, objective.fine_tuned)
    step_factors()
    images = torch.randn(3, 3, 64, 64, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    factors = method.trainable_parameters()
    loss = objective(images, labels)
    gradients = torch.autograd.grad(loss, list(factors.values()))

    plain = load_model("tiny").model.double()
    scale = plain.logit_scale.exp()
    tokens = method.tokens
    current = _point_weights(method, method.solution())

    def logits(weights):
        image_features, text_features, _ = torch.func.functional_call(plain, weights, (images, tokens))
        return scale * image_features @ mean_per_class(text_features, len(CLASSES)).T

    path = [
        F.cross_entropy(logits({n: torch.lerp(start[n], current[n], a) for n in current}), labels) for a in (0.3, 0.8)
    ]
    expected = (
        F.cross_entropy(logits(current), labels)
        + 1.5 * (path[0] + path[1] + F.cross_entropy(logits(current), labels)) / 3
    )
    if zs_reg == "param":
        zs_weights = _point_weights(method, zero_shot.parameters)
        expected = expected + 3.0 * sum(((current[n] - zs_weights[n]) ** 2).sum() for n in current)
    else:
        text = mean_per_class(torch.func.functional_call(plain, current, (None, tokens))[1], len(CLASSES))
        expected = expected + 3.0 * (1 - F.cosine_similarity(text, zero_shot.class_features, dim=-1).mean())
    expected_gradients = torch.autograd.grad(expected, list(factors.values()))
    assert abs(loss.item() - expected.item()) < 1e-6 * abs(expected.item())  # the objective's losses are float32
    for name, got, want in zip(factors, gradients, expected_gradients, strict=True):
        assert torch.allclose(got, want, atol=1e-6, rtol=0), name


def test_lmc_samples_accept_a_list_or_a_count():
    assert parse_lmc_samples("0.5,1.0") == (0.5, 1.0)
    assert parse_lmc_samples("4") == (0.1, 0.35, 0.6, 0.85)  # the reference's NUM_SAMPLES = 4
    assert MergeTuneOptions().lmc_samples == (0.1, 0.3, 0.5, 0.7, 0.9)
    for bad in ("0", "a,b", "1.5"):
        with pytest.raises(Exception, match="lmc-samples"):
            MergeTuneOptions(lmc_samples=parse_lmc_samples(bad))


def test_the_users_spelling_needs_no_data_flags_and_round_trips_through_eval(cli, fine_tuned):
    source = fine_tuned["coop"]
    result = cli("continue", source, "--zs", "tiny", *CONTINUE, "--prototypes", "--eval", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    output = source.with_name("coop.mergetune.safetensors")
    assert summary["output"] == str(output) and summary["kind"] == "prompt" and summary["steps"] == 4

    with open_checkpoint(output, kind="prompt") as ckpt:
        header = ckpt.header
    with open_checkpoint(source) as ckpt:
        source_header = ckpt.header
    assert header.method == "mergetune" and header.config["method"] == "coop"
    assert header.config["mergetune"] == {
        "lambda_lmc": 1.0,
        "lambda_zs": 1.0,
        "zs_reg": "feature",
        "lmc_samples": [0.5, 1.0],
        "zs_loss": "cosine",
        "anchor_templates": source_header.config["templates"],
    }
    import hashlib

    assert header.config["continued_from"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    # The same training images, from the metadata; MergeTune's recipe validates on the whole validation split.
    assert header.config["data"] == {**source_header.config["data"], "val_images": "all"}
    assert (header.base_sha256, header.classnames) == (source_header.base_sha256, source_header.classnames)
    assert open_checkpoint(output.with_name("coop.mergetune.prototypes.safetensors")).header.kind == "prototypes"

    evaluated = cli("eval", output, "--data", "toy:mnist", "--classes", "base", "--device", "cpu", "--json")
    assert evaluated.code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["models"][0]["results"][0]["accuracy"] == summary["test_accuracy"]


def test_continue_reads_its_input_once_and_encodes_the_tasks_text_once(cli, fine_tuned, tmp_path, monkeypatch):
    """The input's header is read once (the base it records included); the class text features of the task's
    templates are made once, for the prototypes and for MergeTune's zero-shot point, which a toy prompt anchors on."""
    import cftool.encode.zero_shot
    import cftool.io.header

    source = fine_tuned["coop"]
    scans, encoded = [], []
    read_raw_header, template_features = cftool.io.header._read_raw_header, cftool.encode.zero_shot.template_features
    monkeypatch.setattr(
        cftool.io.header, "_read_raw_header", lambda path: scans.append(Path(path).resolve()) or read_raw_header(path)
    )
    monkeypatch.setattr(
        cftool.encode.zero_shot,
        "template_features",
        lambda zoo, classnames, templates: (
            encoded.append(list(templates)) or template_features(zoo, classnames, templates)
        ),
    )
    result = cli("continue", source, *CONTINUE, "-o", tmp_path / "continued.safetensors")  # the recorded base
    assert result.code == 0, result.stderr
    assert scans.count(source.resolve()) == 1
    with open_checkpoint(source) as ckpt:
        assert encoded == [ckpt.header.config["templates"]]


@pytest.mark.parametrize("method", ["head", "lora", "full"])
def test_every_kind_continues_into_its_own_kind_and_evaluates(cli, fine_tuned, tmp_path, method):
    output = tmp_path / f"{method}.continued.safetensors"
    zs_reg = "feature" if method == "head" else "param"  # the lora and full runs trained the image tower only
    result = cli("continue", fine_tuned[method], *CONTINUE, "--zs-reg", zs_reg, "-o", output, "--eval", "--json")
    assert result.code == 0, result.stderr
    with open_checkpoint(output, kind=KINDS[method]) as continued, open_checkpoint(fine_tuned[method]) as source:
        assert continued.tensors.keys() == source.tensors.keys()
        assert continued.header.base_sha256 == source.header.base_sha256 == load_model("tiny").weights_sha256
        changed = [name for name in source.tensors if not torch.equal(continued[name], source[name])]
    assert changed, "continuing changed nothing"
    # Each step's row names MergeTune's terms; the loss is their sum weighted by λ_lmc = 1 (default), λ_zs = 1.
    rows = [json.loads(line) for line in metrics_path(output).read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert {"ce", "lmc", "zs", "loss", "lr", "images_per_second", "elapsed_s"} <= row.keys()
        assert row["loss"] == pytest.approx(row["ce"] + row["lmc"] + row["zs"], rel=1e-5)
    evaluated = cli("eval", output, "--data", "toy:mnist", "--classes", "base", "--json")
    assert (
        json.loads(evaluated.stdout)["models"][0]["results"][0]["accuracy"]
        == json.loads(result.stdout)["test_accuracy"]
    )


def test_a_large_zero_shot_weight_pulls_a_head_back_to_the_zero_shot_head(fine_tuned, tmp_path):
    zoo = load_model("tiny")
    with open_checkpoint(fine_tuned["head"]) as ckpt:
        start, classnames, templates = ckpt["head.weight"], ckpt.header.classnames, ckpt.header.config["templates"]
    zero_shot = zero_shot_class_features(zoo, classnames, templates)
    output = tmp_path / "pulled.safetensors"
    options = MergeTuneOptions(lambda_lmc=0.0, lambda_zs=100.0, zs_reg="param")
    continue_training(ContinueJob(fine_tuned["head"], "tiny", options, output, train_overrides={"iterations": 30}))
    with open_checkpoint(output) as ckpt:
        pulled = ckpt["head.weight"]
    assert (pulled - zero_shot).norm() < 0.2 * (start - zero_shot).norm()


@pytest.mark.parametrize("method_class", [LoRA, Full, LinearHead, CoOp])
def test_the_loss_in_parts_has_the_gradient_of_the_whole_loss(method_class):
    """One process backpropagates MergeTune path point by path point (one point's activations alive at a time): the
    parts add up to the loss, their gradients to its gradient, and the logged terms are the same. A prompt, whose
    solution is one graph every point shares, is one part."""
    zoo = load_model("tiny")
    zoo.model.double()
    method = method_class(zoo, CLASSES, TEMPLATES).double()
    zero_shot = ZeroShotPoint.of(method, zero_shot_class_features(zoo, CLASSES, TEMPLATES).double())
    generator = torch.Generator().manual_seed(5)
    options = MergeTuneOptions(lambda_lmc=1.5, lambda_zs=2.0, zs_reg="feature", lmc_samples=(0.2, 0.6, 1.0))
    objective = MergeTune(method, zero_shot, options)
    with torch.no_grad():
        for parameter in method.trainable_parameters().values():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    inputs = torch.randn(3, zoo.model.text_projection.shape[1], generator=generator, dtype=torch.float64)
    if not method.image_tower_frozen:
        inputs = torch.randn(3, 3, 64, 64, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    trained = list(method.trainable_parameters().values())
    loss = objective(inputs, labels)
    whole, whole_terms = torch.autograd.grad(loss, trained), objective.terms
    parts = [(part.detach(), torch.autograd.grad(part, trained)) for part in objective.parts(inputs, labels)]
    assert len(parts) == (1 if method_class is CoOp else 3)
    assert torch.allclose(sum(value for value, _ in parts), loss, rtol=1e-6, atol=0)
    for index, expected in enumerate(whole):
        # The losses are float32 (``Objective.cross_entropy``), so their gradients agree to float32 precision.
        difference = (sum(gradients[index] for _, gradients in parts) - expected).abs().max()
        assert difference <= 1e-6 * expected.abs().max() + 1e-12  # some gradients are rounding noise around 0
    assert objective.terms.keys() == whole_terms.keys()
    assert all(torch.allclose(objective.terms[name], whole_terms[name], rtol=1e-6) for name in whole_terms)


def test_resume_after_ctrl_c_equals_an_uninterrupted_continue(fine_tuned, tmp_path):
    options = MergeTuneOptions(lambda_zs=1.0, lmc_samples=(0.5, 1.0))
    job = ContinueJob(
        fine_tuned["coop"],
        "tiny",
        options,
        tmp_path / "resumed.safetensors",
        train_overrides={"iterations": 6},
        checkpoint_every=2,
    )
    with pytest.raises(TrainingInterrupted, match="after step 3 of 6"):
        continue_training(job, progress=_interrupt_at(2))
    assert state_path(job.output).is_file()
    continue_training(replace(job, resume=True))
    continue_training(replace(job, output=tmp_path / "straight.safetensors"))
    with open_checkpoint(job.output) as resumed, open_checkpoint(tmp_path / "straight.safetensors") as straight:
        assert torch.equal(resumed["ctx"], straight["ctx"])


def test_two_gloo_processes_continue_as_one_process_with_the_same_global_batch(fine_tuned, tmp_path):
    args = [str(fine_tuned["lora"]), *CONTINUE, "--zs-reg", "param", "--device", "cpu"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cftool"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "continue", *args, "-o", str(tmp_path / "two.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with redirect_stdout(io.StringIO()):
        assert main(["continue", *args, "-o", str(tmp_path / "one.safetensors")]) == 0
    with open_checkpoint(tmp_path / "one.safetensors") as one, open_checkpoint(tmp_path / "two.safetensors") as two:
        for name in one.tensors:
            assert torch.allclose(one[name], two[name], atol=1e-5), name


def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(cli, fine_tuned, tmp_path):
    source = fine_tuned["coop"]
    with open_checkpoint(source) as ckpt:
        tensors, header = ckpt.load_all(), ckpt.header

    other_base = save_checkpoint(tmp_path / "other-base.safetensors", tensors, replace(header, base_sha256="0" * 64))
    line = one_line_error(cli("continue", other_base, "--zs", "tiny", *CONTINUE))
    assert str(other_base) in line and "--zs" in line

    prototypes = source.with_name("coop.prototypes.safetensors")
    line = one_line_error(cli("continue", prototypes, *CONTINUE))
    assert str(prototypes) in line and "prototypes" in line

    delta = save_checkpoint(tmp_path / "delta.safetensors", tensors, replace(header, kind="delta"))
    assert "delta apply" in one_line_error(cli("continue", delta, *CONTINUE))

    imported = save_checkpoint(tmp_path / "imported.safetensors", tensors, replace(header, config={"n_ctx": 4}))
    line = one_line_error(cli("continue", imported, *CONTINUE))
    assert str(imported) in line and "--data" in line

    missing = {**header.config, "data": {**header.config["data"], "source": "folder:/nonexistent/images"}}
    moved = save_checkpoint(tmp_path / "moved.safetensors", tensors, replace(header, config=missing))
    line = one_line_error(cli("continue", moved, *CONTINUE))
    assert str(moved) in line and "/nonexistent/images" in line and "--data" in line

    mixed = tmp_path / "ensemble.safetensors"
    assert cli("interpolate", "zs", source, "--alpha", "0.5", "-o", mixed).code == 0
    assert "interpolate" in one_line_error(cli("continue", mixed, *CONTINUE))

    assert "input" in one_line_error(cli("continue", source, "-o", source, "--force", *CONTINUE))
    assert "--zs-reg" in one_line_error(cli("continue", source, "--zs-reg", "hessian", *CONTINUE))
    assert "--lambda-zs" in one_line_error(cli("continue", source, *CONTINUE, "--lambda-zs", "-1"))
    line = one_line_error(cli("continue", fine_tuned["lora"], *CONTINUE, "-o", tmp_path / "frozen.safetensors"))
    assert "--zs-reg param" in line  # lora trained the image tower only: its text features cannot move
    assert not list(tmp_path.glob("*.mergetune.*")) and not (tmp_path / "frozen.safetensors").exists()


def test_help_has_an_example(cli):
    result = cli("continue", "--help")
    assert result.code == 0 and "Example: cftool continue coop.safetensors --zs tiny" in result.stdout


def test_header_keeps_the_base_of_a_continued_model(fine_tuned, tmp_path):
    """Continuing a `model` loads its weights into the zoo model; the output still records the base's hash."""
    output = tmp_path / "model.safetensors"
    options = MergeTuneOptions(lambda_zs=0.1, zs_reg="param", lmc_samples=(1.0,))
    continue_training(ContinueJob(fine_tuned["full"], "tiny", options, output, train_overrides={"iterations": 2}))
    with open_checkpoint(output) as ckpt:
        assert isinstance(ckpt.header, Header) and ckpt.header.base_sha256 == load_model("tiny").weights_sha256
