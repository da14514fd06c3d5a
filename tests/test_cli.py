"""The command line as a user meets it: help, conventions, one-line errors, file commands, zero-shot eval."""

import json
import os
import subprocess
import sys

import pytest
import torch
import typer
from conftest import one_line_error
from safetensors.torch import load_file

from cftool.io.checkpoint import open_checkpoint

ALL_COMMANDS = ["finetune", "continue", "delta", "unify", "decouple", "route", "eval", "inspect", "import", "export"]


def test_help_lists_every_command(cli):
    result = cli("--help")
    assert result.code == 0
    for command in ALL_COMMANDS:
        assert command in result.stdout


def test_no_arguments_print_the_help_and_no_empty_error(cli):
    result = cli()
    assert result.code == 2  # a usage error, as click counts it
    assert "Usage: cftool" in result.stdout and "finetune" in result.stdout
    assert result.stderr == ""


def test_every_command_has_help_with_an_example(cli):
    for words in _commands():
        result = cli(*words, "--help")
        assert result.code == 0
        assert f"Example: cftool {' '.join(words)}" in result.stdout, words


def _commands() -> dict[tuple[str, ...], typer.core.TyperCommand]:
    """Every command by the words that name it: the one-word commands and the two-word ones (`delta apply`)."""
    from cftool.cli import Group, app

    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="cftool")
    return {**{(name,): group.get_command(ctx, name) for name in group.list_commands(ctx)}, **Group.subcommands}


def test_the_command_line_modules_and_every_help_import_neither_torch_nor_open_clip():
    """Commands import the library when they run, so `--help` and shell completion stay fast: the CLI's modules, and
    the names and defaults they show (cftool.options), import no torch."""
    helps = "; ".join(f"main({[*words, '--help']!r})" for words in _commands())
    code = (
        "import pkgutil, sys, importlib, cftool.cli; "
        "[importlib.import_module(m.name) for m in pkgutil.iter_modules(cftool.cli.__path__, 'cftool.cli.')]; "
        f"import cftool.options; from cftool.cli import main; main(['--help']); {helps}; "
        "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_no_help_shows_a_type_beside_a_flag(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    for words in [(), *_commands()]:
        result = cli(*words, "--help")
        assert result.code == 0 and "Usage: cftool" in result.stdout
        assert "<bool>" not in result.stdout, words


# The options with fixed choices, every command's that has one of them (some take free text beside them: --device
# cuda:N, --towers in any order; their help names the choices).
FIXED_CHOICES = set(
    "--method --classes --optimizer --schedule --select --val-images --precision --augment --lora-targets --lora-init "
    "--train-templates --recipe --zs-reg --zs-loss --benchmark --label-space --split --format --dtype --trim "
    "--as".split()
)


def test_every_option_with_fixed_choices_lists_them_in_help(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")  # the type column, a|b|c, on one line
    listed = set()
    for words, command in _commands().items():
        help_text = cli(*words, "--help").stdout
        for param in command.params:
            choices = param.type_descriptor.choices
            if choices:
                assert f"<{'|'.join(choices)}>" in help_text, (words, param.opts)
                listed.update(param.opts)
    assert FIXED_CHOICES <= listed
    assert "'bash', 'zsh', 'fish'" not in cli("completion", "--help").stdout  # an argument's choices, as its type
    assert "<bash|zsh|fish>" in cli("completion", "--help").stdout


def test_a_value_outside_an_options_choices_is_a_usage_error_of_one_line(cli):
    for words, command in _commands().items():
        for param in command.params:
            if param.type_descriptor.choices and isinstance(param, typer.core.TyperOption):
                result = cli(*words, param.opts[-1], "bogus")
                line = one_line_error(result)
                assert result.code == 2, (words, param.opts)
                assert f"'{param.opts[-1]}': 'bogus' is not one of '{param.type_descriptor.choices[0]}'" in line


def test_help_defaults_are_written_one_way(cli, monkeypatch):
    """Typer's `[default: …]`, also where the default depends on something else (`--lr`: the method's)."""
    monkeypatch.setenv("COLUMNS", "500")
    from cftool.options import FINETUNE_METHODS

    finetune = cli("finetune", "--help").stdout
    assert "[default: (" + ", ".join(f"{name} {d.lr:g}" for name, d in FINETUNE_METHODS.items()) + ")]" in finetune
    for words in _commands():
        help_text = cli(*words, "--help").stdout
        assert "(default" not in help_text.lower() and "default:" not in help_text.replace("[default:", ""), words


def test_help_cites_no_design_section_and_no_symbol_it_does_not_define(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    for words in [(), *_commands()]:
        help_text = cli(*words, "--help").stdout
        for unexplained in ("§", "ŵ", "δ", "⊙", "θ", "Δ", "λ", "‖"):
            assert unexplained not in help_text, (words, unexplained)


def test_workers_and_device_default_the_same_in_every_command():
    from cftool.options import DEVICE, WORKERS

    defaults = {
        (words, param.name): param.default
        for words, command in _commands().items()
        for param in command.params
        if param.name in ("workers", "device")
    }
    assert {name for _, name in defaults} == {"workers", "device"}
    assert {default for (_, name), default in defaults.items() if name == "workers"} == {WORKERS}
    assert {default for (_, name), default in defaults.items() if name == "device"} == {DEVICE}
    assert (("interpolate",), "device") in defaults and (("import",), "device") in defaults


def test_usage_errors_are_one_line(cli):
    line = one_line_error(cli("eval", "--no-such-flag"))
    assert "--no-such-flag" in line
    assert "--benchmark" in one_line_error(cli("eval"))


def test_a_bad_device_is_refused(cli):
    assert "--device" in one_line_error(cli("eval", "--zs", "tiny", "--data", "toy:mnist", "--device", "tpu"))


def test_python_dash_m_works_and_prints_no_traceback_for_user_errors():
    result = subprocess.run(
        [sys.executable, "-m", "cftool", "inspect", "/nonexistent/x.safetensors"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "/nonexistent/x.safetensors" in result.stderr


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    from cftool.cli import main

    path = tmp_path_factory.mktemp("zoo") / "base.safetensors"
    assert main(["export", "--zs", "tiny", "-o", str(path)]) == 0
    return path


def test_export_zoo_model_then_inspect(cli, base_file):
    result = cli("inspect", base_file, "--check", "--json")
    assert result.code == 0
    [summary] = json.loads(result.stdout)
    assert summary["kind"] == "model" and summary["base"] == "tiny"
    assert summary["parameters"] > 1_000_000
    assert summary["non_finite"] == {}


def test_a_table_written_to_a_pipe_keeps_its_full_width_unless_columns_is_set(base_file, tmp_path):
    logged = tmp_path / ("a-checkpoint-name-long-enough-to-overflow-eighty-columns" + ".safetensors")
    logged.write_bytes(base_file.read_bytes())
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}

    def table(**extra_env) -> str:
        return subprocess.run(
            [sys.executable, "-m", "cftool", "inspect", str(logged)],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    assert logged.name in table() and "…" not in table()
    assert logged.name not in table(COLUMNS="60")  # a width the user asks for is honoured


def test_inspect_check_finds_nan(cli, base_file, tmp_path):
    from cftool.io.checkpoint import save_checkpoint

    with open_checkpoint(base_file) as ckpt:
        tensors, header = ckpt.load_all(), ckpt.header
    tensors["logit_scale"] = torch.tensor(float("nan"))
    bad = save_checkpoint(tmp_path / "nan.safetensors", tensors, header)
    result = cli("inspect", bad, "--check")
    assert result.code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "NaN/Inf" in last and "logit_scale" in last


def test_existing_output_is_never_overwritten_without_force(cli, base_file, tmp_path):
    target = tmp_path / "taken.safetensors"
    target.write_bytes(b"precious")
    assert "--force" in one_line_error(cli("export", "--zs", "tiny", "-o", target))
    assert target.read_bytes() == b"precious"
    assert cli("export", "--zs", "tiny", "-o", target, "--force").code == 0
    assert open_checkpoint(target).header.kind == "model"


def test_export_import_and_interpolate_print_their_files_as_json_on_stdout(cli, base_file, tmp_path):
    zoo = tmp_path / "zoo.safetensors"
    exported = cli("export", "--zs", "tiny", "-o", zoo, "--json")
    assert exported.code == 0 and json.loads(exported.stdout) == {"output": str(zoo), "kind": "model"}
    assert f"wrote {zoo}" in exported.stderr
    plain = tmp_path / "plain.pt"
    assert json.loads(cli("export", base_file, "-o", plain, "--json").stdout) == {"output": str(plain), "kind": None}
    back = tmp_path / "back.safetensors"
    imported = json.loads(cli("import", plain, "--zs", "tiny", "-o", back, "--json").stdout)
    assert imported == {"format": "open_clip", "output": str(back), "kind": "model", "prototypes": []}
    mixed = tmp_path / "mixed.safetensors"
    interpolated = json.loads(cli("interpolate", "zs", base_file, "--alpha", "0.5", "-o", mixed, "--json").stdout)
    assert interpolated == {"output": str(mixed), "start": "zs", "end": str(base_file), "alpha": 0.5, "base": "tiny"}
    assert open_checkpoint(mixed).header.kind == "model"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_plain_then_import_round_trips_exactly(cli, base_file, tmp_path, suffix):
    plain = tmp_path / f"plain{suffix}"
    assert cli("export", base_file, "-o", plain).code == 0
    state = load_file(plain) if suffix == ".safetensors" else torch.load(plain, weights_only=True)
    assert "cftool.format" not in open(plain, "rb").read(4096).decode("latin-1") or suffix == ".pt"
    back = tmp_path / "back.safetensors"
    assert cli("import", plain, "--zs", "tiny", "-o", back).code == 0
    with open_checkpoint(base_file) as a, open_checkpoint(back) as b:
        assert a.keys() == b.keys() == list(state)
        for name in a.keys():
            assert torch.equal(a[name], b[name]) and torch.equal(a[name], state[name])
        assert b.header.base_sha256 == a.header.base_sha256


def test_import_refuses_a_state_dict_of_another_architecture(cli, tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3, 3)}, wrong)
    line = one_line_error(cli("import", wrong, "--zs", "tiny", "-o", tmp_path / "out.safetensors"))
    assert str(wrong) in line
    assert not (tmp_path / "out.safetensors").exists()


def test_import_a_dassl_coop_prompt(cli, tmp_path):
    source = tmp_path / "prompt_learner" / "model.pth.tar-50"
    source.parent.mkdir()
    ctx = torch.randn(4, 128)
    torch.save({"state_dict": {"ctx": ctx, **_tiny_token_buffers(5)}, "epoch": 50}, source)
    out = tmp_path / "coop.safetensors"
    assert cli("import", source, "--zs", "tiny", "-o", out, "--task", "mnist").code == 0
    with open_checkpoint(out, kind="prompt") as ckpt:
        assert torch.equal(ckpt["ctx"], ctx)
        assert ckpt.header.task == "mnist" and ckpt.header.config["n_ctx"] == 4
    wide = tmp_path / "wide" / "model.pth.tar-1"
    wide.parent.mkdir()
    torch.save({"state_dict": {"ctx": torch.randn(4, 512)}, "epoch": 1}, wide)
    assert "width 512" in one_line_error(cli("import", wide, "--zs", "tiny", "-o", tmp_path / "w.safetensors"))


def _tiny_token_buffers(n_classes: int) -> dict[str, torch.Tensor]:
    """CoOp's token_prefix and token_suffix as it saves them for `tiny`: the embeddings of the start token and of
    a class name's end and padding."""
    from cftool.zoo import load_model

    tiny = load_model("tiny")
    tokens = tiny.tokenizer(["X X X X cat."] * n_classes)
    with torch.no_grad():
        embedded = tiny.model.token_embedding(tokens)
    return {"token_prefix": embedded[:, :1], "token_suffix": embedded[:, 5:]}


def test_foreign_prompts_cocoop_renamed_files_wrong_bases_and_class_specific_context(cli, tmp_path):
    from cftool.data import load_task

    n_food = len(load_task("toy:food").classnames)
    csc = tmp_path / "csc.pth"  # a Dassl checkpoint renamed: detected by its content, not its name
    ctx = torch.randn(n_food, 4, 128) * 0.02
    torch.save({"state_dict": {"ctx": ctx, **_tiny_token_buffers(n_food)}, "epoch": 10}, csc)
    out = tmp_path / "csc.safetensors"
    assert cli("import", csc, "--zs", "tiny", "-o", out, "--task", "food").code == 0
    with open_checkpoint(out, kind="prompt") as ckpt:
        assert ckpt.header.config["class_specific"] is True and ckpt.header.config["n_ctx"] == 4
    result = cli("eval", out, "--data", "toy:food", "--json")
    assert result.code == 0, result.stderr
    assert 0 <= json.loads(result.stdout)["models"][0]["results"][0]["accuracy"] <= 100
    assert "class-specific" in one_line_error(cli("eval", out, "--data", "toy:mnist"))

    cocoop = tmp_path / "cocoop" / "model.pth.tar-10"
    cocoop.parent.mkdir()
    meta_net = {"meta_net.linear1.weight": torch.zeros(8, 128), "meta_net.linear2.weight": torch.zeros(128, 8)}
    torch.save({"state_dict": {"ctx": torch.randn(4, 128), **meta_net, **_tiny_token_buffers(3)}}, cocoop)
    assert "CoCoOp" in one_line_error(cli("import", cocoop, "--zs", "tiny", "-o", tmp_path / "c.safetensors"))

    other_base = tmp_path / "other" / "model.pth.tar-10"
    other_base.parent.mkdir()
    wrong = {name: tensor + 0.5 for name, tensor in _tiny_token_buffers(3).items()}
    torch.save({"state_dict": {"ctx": torch.randn(4, 128), **wrong}}, other_base)
    error = one_line_error(cli("import", other_base, "--zs", "tiny", "-o", tmp_path / "o.safetensors"))
    assert "token_prefix" in error and "other weights" in error
    assert not (tmp_path / "o.safetensors").exists()


def test_config_file_gives_defaults_and_flags_win(cli, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("zs: tiny\ndata: [toy:mnist]\nbatch-size: 64\ndevice: tpu\n")
    assert "--device" in one_line_error(cli("eval", "--config", config))
    result = cli("eval", "--config", config, "--device", "cpu", "--json")
    assert result.code == 0, result.stderr
    [task] = json.loads(result.stdout)["models"][0]["results"]
    assert task["task"] == "mnist" and task["num_classes"] == 10 and 0 <= task["accuracy"] <= 100
    unknown = one_line_error(cli("eval", "--config", _write(tmp_path / "bad.yaml", "bogus: 1\n")))
    valid = unknown.partition("valid keys: ")[2].partition(" (see")[0].split(", ")
    assert "unknown key(s) bogus" in unknown and {"batch-size", "format", "json", "checkpoints"} <= set(valid)
    assert not {"json-output", "output-format"} & set(valid)  # parameter names, not what --help shows
    assert "not valid YAML" in one_line_error(cli("eval", "--config", _write(tmp_path / "broken.yaml", "a: [\n")))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("zs: tiny  # café\n".encode("latin-1"))
    assert "not UTF-8 text" in one_line_error(cli("eval", "--config", latin1))


@pytest.mark.parametrize("flags", [("--config", "broken.yaml", "--help"), ("--recipe", "no-such-recipe", "-h")])
def test_help_answers_before_a_config_or_recipe_is_read(cli, tmp_path, flags):
    _write(tmp_path / "broken.yaml", "a: [\n")
    flags = [str(tmp_path / flag) if flag.endswith(".yaml") else flag for flag in flags]
    result = cli("finetune", *flags)
    assert result.code == 0 and "Usage: cftool finetune" in result.stdout and "error" not in result.stderr


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("damage", ["truncated", "corrupt header", "not safetensors", "missing"])
def test_inspect_of_a_damaged_file_is_one_line(cli, base_file, tmp_path, damage):
    path = tmp_path / "damaged.safetensors"
    data = base_file.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt header":
        path.write_bytes(data[:8] + b"{not json" + data[17:])
    elif damage == "not safetensors":
        path.write_text("name,accuracy\nmnist,93.1\n")
    line = one_line_error(cli("inspect", path))
    assert str(path) in line


def test_import_refuses_a_pickle_that_would_run_code(cli, tmp_path):
    import os

    marker = tmp_path / "code-ran"

    class RunsShellCommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"visual.proj": torch.zeros(2), "payload": RunsShellCommand()}, evil)
    line = one_line_error(cli("import", evil, "--zs", "tiny", "-o", tmp_path / "out.safetensors"))
    assert "refused" in line and str(evil) in line
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_eval_writes_its_report_with_output(cli, tmp_path):
    report = tmp_path / "report.json"
    result = cli("eval", "--zs", "tiny", "--data", "toy:mnist", "--classes", "base", "-o", report)
    assert result.code == 0, result.stderr
    [task] = json.loads(report.read_text())["models"][0]["results"]
    assert task["num_classes"] == 5 and task["classes"] == "base"
    assert "--force" in one_line_error(cli("eval", "--zs", "tiny", "--data", "toy:mnist", "-o", report))


def test_eval_of_several_checkpoints_checks_each_against_the_base(cli, base_file, tmp_path):
    from cftool.io.checkpoint import save_checkpoint

    with open_checkpoint(base_file) as ckpt:
        tensors, header = ckpt.load_all(), ckpt.header
    tensors["logit_scale"] = tensors["logit_scale"] + 1  # another model of the same base, same predictions
    other = save_checkpoint(tmp_path / "other.safetensors", tensors, header)
    result = cli("eval", base_file, other, "--data", "toy:mnist", "--classes", "novel", "--json")
    assert result.code == 0, result.stderr
    first, second = json.loads(result.stdout)["models"]
    assert first["results"][0]["accuracy"] == second["results"][0]["accuracy"]


def test_json_output_is_strict_json_even_for_nan(capsys):
    import math

    from cftool.cli.common import emit_json

    emit_json({"accuracy": math.nan, "losses": [1.0, math.inf], "nested": {"x": -math.inf}})
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"accuracy": None, "losses": [1.0, None], "nested": {"x": None}}


def test_inspect_check_scans_8_bit_float_and_complex_tensors(cli, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file(
        {
            "f8": torch.tensor([float("nan"), 1.0]).to(torch.float8_e5m2),
            "f8_clean": torch.zeros(4).to(torch.float8_e4m3fn),
            "complex": torch.tensor([complex(float("inf"), 0), 1j], dtype=torch.complex64),
        },
        path,
    )
    result = cli("inspect", "--check", "--json", path)
    assert result.code != 0
    assert json.loads(result.stdout)[0]["non_finite"] == {"f8": 1, "complex": 1}


def test_a_context_longer_than_the_text_tower_allows_is_refused_not_truncated(cli, tmp_path):
    error = one_line_error(
        cli(
            "finetune",
            "--zs",
            "tiny",
            "--data",
            "toy:mnist",
            "--shots",
            "1",
            "--iterations",
            "1",
            "--n-ctx",
            "30",
            "--ctx-init",
            "random",
            "-o",
            tmp_path / "long.safetensors",
        )
    )
    assert "30 context vectors" in error and "more than the text tower's 32" in error
    long_ctx = tmp_path / "long" / "model.pth.tar-1"
    long_ctx.parent.mkdir()
    torch.save({"state_dict": {"ctx": torch.randn(200, 128)}, "epoch": 1}, long_ctx)
    error = one_line_error(cli("import", long_ctx, "--zs", "tiny", "-o", tmp_path / "imported.safetensors"))
    assert "200 context vectors leave no room" in error
    assert list(tmp_path.glob("*.safetensors")) == []
