"""`delta`, `unify`, `decouple` and the ConDU import through the command line, on models of the testbed's size."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import files_in, one_line_error

from cftool.io.checkpoint import Header, open_checkpoint, save_checkpoint
from cftool.io.unified import open_unified
from cftool.zoo.base_weights import open_base

TASKS = {"food": ["one", "two", "three"], "mnist": ["zero", "one"], "cars": ["left", "right", "up", "down"]}


@pytest.fixture(scope="module")
def base():
    with open_base("tiny") as weights:
        state = {name: weights[name] for name in weights}
        yield weights, state


def fine_tune(state, seed, scale=1e-3):
    """A stand-in for a full fine-tune: every floating tensor moved by noise (a few of them not at all)."""
    generator = torch.Generator().manual_seed(seed)
    tuned = {}
    for position, (name, tensor) in enumerate(state.items()):
        if tensor.is_floating_point() and position % 7:
            tensor = tensor + scale * torch.randn(tensor.shape, generator=generator)
        tuned[name] = tensor
    return tuned


@pytest.fixture(scope="module")
def models(base, tmp_path_factory):
    """One `model` file per task, made for `tiny` as `finetune --method full` records them."""
    weights, state = base
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for seed, (task, classnames) in enumerate(TASKS.items()):
        header = weights.header("model", task=task, classnames=classnames, template="a photo of {}.", method="full")
        paths[task] = save_checkpoint(folder / f"ft-{task}.safetensors", fine_tune(state, seed), header)
    return paths


@pytest.fixture(scope="module")
def deltas(models, tmp_path_factory):
    from cftool.cli import main

    folder = tmp_path_factory.mktemp("deltas")
    for task, path in models.items():
        assert main(["delta", str(path), "--zs", "tiny", "-o", str(folder / f"{task}.safetensors")]) == 0
    return {task: folder / f"{task}.safetensors" for task in TASKS}


@pytest.fixture(scope="module")
def unified(deltas, tmp_path_factory):
    from cftool.cli import main

    path = tmp_path_factory.mktemp("unified") / "unified.st"
    assert main(["unify", *map(str, deltas.values()), "-o", str(path)]) == 0
    return path


@pytest.mark.parametrize("command", ["delta", "unify", "decouple"])
def test_every_merge_command_has_help_with_an_example(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "Example: cftool" in result.stdout


def test_torch_only_base_hashes_equal_the_models(base, models, tmp_path):
    from cftool.cli import main
    from cftool.zoo import load_model

    weights, _ = base
    assert weights.sha256 == load_model("tiny").weights_sha256
    plain = tmp_path / "plain.safetensors"
    assert main(["export", str(models["food"]), "-o", str(plain)]) == 0
    for spec in (str(models["food"]), f"cftool-tiny:{plain}"):
        with open_base(spec) as other:
            zoo = load_model(spec)
            assert other.sha256 == zoo.weights_sha256
            assert other.canonical == zoo.spec.canonical


def test_delta_subtracts_the_base_and_apply_adds_it_back(cli, base, models, deltas, tmp_path):
    weights, state = base
    with open_checkpoint(deltas["food"], kind="delta") as delta, open_checkpoint(models["food"]) as model:
        assert delta.header.task == "food" and delta.header.classnames == TASKS["food"]
        assert delta.header.base == "tiny" and delta.header.base_sha256 == weights.sha256
        floating = [n for n, t in state.items() if t.is_floating_point()]
        assert delta.keys() == floating  # num_batches_tracked counters have no delta
        for name in floating:
            assert torch.equal(delta[name], model[name] - state[name])
    rebuilt = tmp_path / "food.safetensors"
    assert cli("delta", "apply", deltas["food"], "--zs", "tiny", "-o", rebuilt).code == 0
    half = tmp_path / "half.safetensors"
    assert cli("delta", "apply", deltas["food"], "-o", half, "--scale", "0.5").code == 0
    with open_checkpoint(rebuilt, kind="model") as back, open_checkpoint(models["food"]) as model:
        assert back.keys() == model.keys() and back.header.task == "food"
        for name in model.keys():
            assert torch.allclose(back[name], model[name], rtol=0, atol=1e-6)
    with open_checkpoint(half) as h, open_checkpoint(deltas["food"]) as d:
        assert torch.allclose(h["text_projection"], state["text_projection"] + 0.5 * d["text_projection"])


def test_delta_dtype_option(cli, models, tmp_path):
    out = tmp_path / "half.safetensors"
    assert cli("delta", models["mnist"], "--dtype", "bf16", "-o", out).code == 0
    with open_checkpoint(out) as delta:
        assert {info.dtype for info in delta.tensors.values()} == {"BF16"}


def test_decouple_all_gives_the_design_expert(cli, base, models, unified, tmp_path):
    """docs/design.md §5.2 from the fine-tuned models themselves, against `decouple --all` through the CLI."""
    _, state = base
    floating = [n for n, t in state.items() if t.is_floating_point()]
    tuned = []
    for task in TASKS:
        with open_checkpoint(models[task]) as model:
            tuned.append({n: model[n] - state[n] for n in floating})
    numerator, denominator = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    masks, unified_delta = [{}, {}, {}], {}
    for name in floating:
        values = [d[name] for d in tuned]
        sign = torch.where(sum(values) > 0, 1.0, -1.0)
        for i, value in enumerate(values):
            masks[i][name] = value * sign > 0
        unified_delta[name] = sign * torch.stack(
            [(v * m[name]).abs() for v, m in zip(values, masks, strict=True)]
        ).amax(0)
        for i, value in enumerate(values):
            numerator[i] += value.abs().double().mean()
            denominator[i] += (masks[i][name] * unified_delta[name]).abs().double().mean()
    rescalers = (numerator / denominator).float()

    result = cli("decouple", unified, "--all", "-o", tmp_path / "experts", "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["tasks"] == list(TASKS)
    model_out = tmp_path / "cars-model.safetensors"
    assert cli("decouple", unified, "--task", "cars", "--as", "model", "-o", model_out).code == 0
    for i, task in enumerate(TASKS):
        with open_checkpoint(tmp_path / "experts" / f"{task}.safetensors", kind="delta") as expert:
            assert expert.header.task == task and expert.header.classnames == TASKS[task]
            assert expert.header.config["rescaler"] == pytest.approx(float(rescalers[i]), rel=1e-6)
            for name in floating:
                expected = rescalers[i] * masks[i][name] * unified_delta[name]
                assert torch.allclose(expert[name], expected, rtol=1e-6, atol=1e-9), (task, name)
    with open_checkpoint(model_out, kind="model") as model:
        assert model.header.base == "tiny" and model.keys() == list(state)
        for name in state:
            expected = state[name] + (rescalers[2] * masks[2][name] * unified_delta[name] if name in floating else 0)
            assert torch.allclose(model[name], expected.to(state[name].dtype), rtol=1e-6, atol=1e-7), name


def test_inspect_shows_a_unified_sets_tasks(cli, unified):
    result = cli("inspect", unified, "--json")
    assert result.code == 0, result.stderr
    [summary] = json.loads(result.stdout)
    assert summary["kind"] == "unified"
    assert [t["task"] for t in summary["tasks"]] == list(TASKS)
    assert [t["classes"] for t in summary["tasks"]] == [len(c) for c in TASKS.values()]
    assert all(0 < t["mask_density"] < 1 and t["rescaler"] > 0 for t in summary["tasks"])
    assert "mask density" in cli("inspect", unified).stdout  # the table, without --json
    with open_unified(unified) as unified_set:
        assert [t.template for t in unified_set.tasks] == ["a photo of {}."] * 3
        bits = sum(info.numel for name, info in unified_set.reader.tensors.items() if name.startswith("mask/")) * 8
        parameters = sum(info.numel for info in unified_set.delta.values())
        assert bits / 3 == pytest.approx(parameters, abs=8 * len(unified_set.delta))  # 1 bit per parameter


@pytest.mark.parametrize("method", ["ties", "task-arithmetic", "dare", "mean"])
def test_other_methods_write_a_delta_that_applies(cli, deltas, tmp_path, method):
    merged = tmp_path / f"{method}.safetensors"
    result = cli("unify", *deltas.values(), "--method", method, "-o", merged, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "delta"
    with open_checkpoint(merged, kind="delta") as delta:
        assert delta.header.method == method and delta.header.config["tasks"] == list(TASKS)
    assert cli("delta", "apply", merged, "-o", tmp_path / "model.safetensors").code == 0


def test_dare_ties_takes_dares_options_and_refuses_keep(cli, deltas, tmp_path):
    merged = tmp_path / "dare-ties.safetensors"
    options = ("--method", "dare-ties", "--p", "0.3", "--lambda", "0.5")
    result = cli("unify", *deltas.values(), *options, "-o", merged, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "delta"
    with open_checkpoint(merged, kind="delta") as delta:
        assert delta.header.method == "dare-ties"
        assert {key: delta.header.config[key] for key in ("p", "seed", "scale")} == {"p": 0.3, "seed": 0, "scale": 0.5}
    refused = cli("unify", *deltas.values(), *options, "--keep", "0.3", "-o", tmp_path / "x.st")
    assert "--method dare-ties takes no --keep" in one_line_error(refused)
    assert files_in(tmp_path) == [merged.name]


def test_method_options_belong_to_their_method(cli, deltas, tmp_path):
    line = one_line_error(cli("unify", *deltas.values(), "--keep", "0.3", "-o", tmp_path / "x.st"))
    assert "--method condu takes no --keep" in line
    assert "--keep" in one_line_error(cli("unify", *deltas.values(), "--method", "ties", "--keep", "2", "-o", "x"))
    soup = cli("unify", *deltas.values(), "--method", "soup", "-o", "x")
    assert soup.code == 2 and "'soup' is not one of 'condu', 'condu-lora', 'ties'" in one_line_error(soup)
    assert files_in(tmp_path) == []


def test_continual_session_with_into_and_replace(cli, deltas, unified, tmp_path):
    first = tmp_path / "first.st"
    assert cli("unify", deltas["food"], deltas["mnist"], "-o", first).code == 0
    second = tmp_path / "second.st"
    assert cli("unify", "--into", first, deltas["cars"], "-o", second).code == 0
    with open_unified(second) as a, open_unified(unified) as b:
        assert a.task_names == b.task_names == list(TASKS)
    line = one_line_error(cli("unify", "--into", second, deltas["food"], "-o", tmp_path / "third.st"))
    assert "'food' is already in" in line and "--replace" in line
    assert cli("unify", "--into", second, deltas["food"], "--replace", "-o", tmp_path / "third.st").code == 0
    with open_unified(tmp_path / "third.st") as third:
        assert third.task_names == list(TASKS)


def test_lora_is_merged_into_the_weights_first(cli, base, tmp_path):
    weights, state = base
    target = "transformer.resblocks.0.attn.out_proj.weight"
    out_features, in_features = state[target].shape
    lora_a, lora_b = torch.randn(2, in_features), torch.randn(out_features, 2)
    header = weights.header("lora", task="food", config={"rank": 2, "alpha": 4, "targets": [target]})
    factors = {f"{target}.lora_A": lora_a, f"{target}.lora_B": lora_b}
    lora = save_checkpoint(tmp_path / "lora.safetensors", factors, header)
    assert cli("delta", lora, "--zs", "tiny", "-o", tmp_path / "d.safetensors").code == 0
    with open_checkpoint(tmp_path / "d.safetensors") as delta:
        assert torch.allclose(delta[target], 2 * lora_b @ lora_a, atol=1e-5)
        assert not delta["text_projection"].any()


@pytest.mark.parametrize(
    "kind, tensors", [("prompt", {"ctx": torch.zeros(4, 128)}), ("head", {"head.weight": torch.zeros(2, 128)})]
)
def test_prompts_and_heads_have_no_delta(cli, base, tmp_path, kind, tensors):
    weights, _ = base
    path = save_checkpoint(tmp_path / f"{kind}.safetensors", tensors, weights.header(kind, task="food"))
    line = one_line_error(cli("delta", path, "--zs", "tiny", "-o", tmp_path / "d.safetensors"))
    assert str(path) in line and "no delta" in line and "--method full or lora" in line
    assert not (tmp_path / "d.safetensors").exists()


def test_bad_inputs_are_one_line_errors_that_leave_no_file(cli, models, deltas, unified, tmp_path):
    with open_checkpoint(deltas["food"]) as delta:
        tensors, header = delta.load_all(), delta.header
    other_base = Header("delta", "ViT-B-16:openai", "f" * 64, task="sun397")
    other = save_checkpoint(tmp_path / "other-base.safetensors", tensors, other_base)
    fewer = {name: tensor for name, tensor in tensors.items() if name != "logit_scale"}
    fewer_header = Header("delta", "tiny", header.base_sha256, task="d")
    fewer = save_checkpoint(tmp_path / "fewer.safetensors", fewer, fewer_header)
    nan = dict(tensors, text_projection=torch.full_like(tensors["text_projection"], float("nan")))
    nan = save_checkpoint(tmp_path / "nan.safetensors", nan, Header("delta", "tiny", header.base_sha256, task="x"))
    before = files_in(tmp_path)
    out = tmp_path / "out.st"
    cases = [
        (("unify", deltas["food"], other, "-o", out), [str(other), "'ViT-B-16:openai'", str(deltas["food"]), "'tiny'"]),
        (("unify", deltas["food"], fewer, "-o", out), [str(fewer), "1 missing", "'logit_scale'"]),
        (("unify", deltas["food"], models["mnist"], "-o", out), [str(models["mnist"]), "expected a 'delta'"]),
        (("unify", "--into", deltas["mnist"], deltas["food"], "-o", out), [str(deltas["mnist"]), "unified set"]),
        (("unify", deltas["food"], nan, "-o", out), [str(nan), "'text_projection'", "NaN or Inf"]),
        (("unify", deltas["food"], deltas["mnist"], "-o", deltas["mnist"], "--force"), ["is also an input"]),
        (("unify", deltas["food"], deltas["food"], "-o", out), ["task 'food' is also the task of"]),
        (("decouple", unified, "--task", "sun397", "-o", out), [str(unified), "no task 'sun397'", "food, mnist, cars"]),
        (("decouple", unified, "--task", "food", "-o", unified, "--force"), ["is also an input"]),
        (("delta", models["food"], "-o", models["food"], "--force"), ["is also an input"]),
        (("delta", "apply", models["food"], "-o", out), ["expected a 'delta'"]),
    ]
    for args, fragments in cases:
        line = one_line_error(cli(*args))
        for fragment in fragments:
            assert fragment in line, (args, line)
        assert files_in(tmp_path) == before, args
    with open_checkpoint(deltas["mnist"], kind="delta"), open_unified(unified):
        pass  # the inputs named as outputs are intact


def test_a_fine_tune_of_another_base_is_refused(cli, models, tmp_path):
    with open_checkpoint(models["food"]) as model:
        header = model.header
        header.base_sha256 = "0" * 64
        foreign = save_checkpoint(tmp_path / "foreign.safetensors", model.load_all(), header)
    line = one_line_error(cli("delta", foreign, "--zs", "tiny", "-o", tmp_path / "d.safetensors"))
    assert "000000000000" in line and "weights sha256" in line
    assert files_in(tmp_path) == ["foreign.safetensors"]


def test_commands_that_move_tensors_do_not_import_open_clip(deltas, models, unified, tmp_path):
    calls = [
        ["delta", str(models["food"]), "--zs", "tiny", "-o", str(tmp_path / "d.safetensors")],
        ["delta", "apply", str(deltas["food"]), "--zs", "tiny", "-o", str(tmp_path / "m.safetensors")],
        ["unify", *map(str, deltas.values()), "-o", str(tmp_path / "u.st")],
        ["unify", *map(str, deltas.values()), "--method", "ties", "-o", str(tmp_path / "t.st")],
        ["decouple", str(unified), "--task", "food", "--as", "model", "--zs", "tiny", "-o", str(tmp_path / "e.st")],
        ["inspect", str(unified)],
    ]
    code = (
        "import sys; from cftool.cli import main\n"
        f"for call in {calls!r}:\n"
        "    assert main(call) == 0, call\n"
        "print(sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def make_condu_session(folder, state, n_tasks=3):
    """A session folder as ConDU's code leaves it: unified.pth, {task}.pth with masks and rescalers, prototypes."""
    folder.mkdir()
    generator = torch.Generator().manual_seed(7)
    floating = {n: t for n, t in state.items() if t.is_floating_point()}
    unified = {n: torch.randn(t.shape, generator=generator) * 1e-3 for n, t in floating.items()}
    torch.save(unified, folder / "unified.pth")
    names = ["DTD", "Aircraft", "MNIST"][:n_tasks]  # session order: not the order of the names
    triggers = {}
    for i, task in enumerate(names):
        masks = {n: torch.rand(t.shape, generator=generator) > 0.5 for n, t in floating.items()}
        triggers[task] = (masks, torch.tensor(0.5 + i))
        torch.save({"masks": masks, "rescalers": torch.tensor(0.5 + i)}, folder / f"{task}.pth")
    prototypes = {task: [torch.randn(128, generator=generator) for _ in range(3 + i)] for i, task in enumerate(names)}
    torch.save(prototypes, folder / "prototypes.pth")
    return unified, triggers, prototypes


def test_import_of_a_condu_session_folder(cli, base, tmp_path):
    weights, state = base
    unified, triggers, prototypes = make_condu_session(tmp_path / "session_2", state)
    out = tmp_path / "out" / "unified.st"
    out.parent.mkdir()
    result = cli("import", tmp_path / "session_2", "--zs", "tiny", "-o", out)
    assert result.code == 0, result.stderr
    with open_unified(out) as unified_set:
        assert unified_set.task_names == ["DTD", "Aircraft", "MNIST"]
        assert unified_set.header.base_sha256 == weights.sha256
        assert unified_set.rescalers.tolist() == [0.5, 1.5, 2.5]
    assert cli("decouple", out, "--task", "Aircraft", "-o", tmp_path / "aircraft.safetensors").code == 0
    masks, rescaler = triggers["Aircraft"]
    with open_checkpoint(tmp_path / "aircraft.safetensors") as expert:
        for name, u in unified.items():
            assert torch.allclose(expert[name], u * masks[name] * rescaler, rtol=1e-6, atol=0)
    for task, vectors in prototypes.items():
        with open_checkpoint(out.parent / f"{task}.prototypes.safetensors", kind="prototypes") as ckpt:
            assert ckpt.header.task == task
            assert torch.equal(ckpt["prototypes"], torch.stack(vectors))
    again = one_line_error(cli("import", tmp_path / "session_2", "--zs", "tiny", "-o", out.parent / "again.st"))
    assert "exists" in again and "--force" in again  # the prototype files are not overwritten either
    (tmp_path / "session_2" / "unified.pth").unlink()
    assert "not a ConDU session folder" in one_line_error(
        cli("import", tmp_path / "session_2", "--format", "condu", "--zs", "tiny", "-o", tmp_path / "x.st")
    )


def test_ctrl_c_says_which_outputs_were_finished(cli, base, tmp_path, monkeypatch):
    """Importing a ConDU session writes the unified set, then each task's prototypes: interrupted in the second
    prototypes file, the command names the two files it finished and leaves no temporary file."""
    from cftool.cli import Interrupted
    from cftool.io import checkpoint

    _, state = base
    make_condu_session(tmp_path / "session_2", state)
    out = tmp_path / "out"
    write = checkpoint.CheckpointWriter.write

    def interrupted_in_aircraft(self, name, tensor):
        if self.path.name.startswith("Aircraft"):
            raise Interrupted
        return write(self, name, tensor)

    monkeypatch.setattr(checkpoint.CheckpointWriter, "write", interrupted_in_aircraft)
    result = cli("import", tmp_path / "session_2", "--zs", "tiny", "-o", out / "unified.st")
    assert result.code == 130
    [line] = result.stderr.strip().splitlines()
    finished = [out / "unified.st", out / "DTD.prototypes.safetensors"]
    assert line == f"interrupted: wrote {finished[0]}, {finished[1]}; nothing else was written"
    assert sorted(out.iterdir()) == sorted(finished)  # and no temporary file
