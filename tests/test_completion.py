"""`cftool completion SHELL`: the scripts complete commands, options and option values in the shells themselves."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cftool.cli import completions
from cftool.cli.completions import TEXT_CHOICES
from cftool.options import BENCHMARKS

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _script(shell: str) -> str:
    """The script as a user gets it: the installed command, run in a shell of its own."""
    result = subprocess.run(["cftool", "completion", shell], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "cftool.bash"
    path.write_text(_script("bash"))
    return path


def _complete(script: Path, line: str, cwd: Path | None = None) -> list[str]:
    """What a Tab at the end of ``line`` offers: bash's COMPREPLY from the script's function, as bash calls it."""
    probe = (
        f"source {script}\n"
        f"COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}\n"
        'read -ra COMP_WORDS <<< "$COMP_LINE"; [[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")\n'
        "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
        '_cftool; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe], capture_output=True, text=True, cwd=cwd, check=True
    )
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_commands_flags_and_values(bash_script):
    assert _complete(bash_script, "cftool ev") == ["eval"]
    assert "completion" in _complete(bash_script, "cftool ")
    assert _complete(bash_script, "cftool eval --bench") == ["--benchmark"]
    assert _complete(bash_script, "cftool eval --benchmark ") == list(BENCHMARKS)
    assert _complete(bash_script, "cftool eval --benchmark mtil-") == ["mtil-tiny", "mtil-order2"]
    assert _complete(bash_script, "cftool finetune --method ") == ["coop", "head", "lora", "full"]
    assert "ties" in _complete(bash_script, "cftool unify --method ")
    assert _complete(bash_script, "cftool continue --zs-reg f") == ["feature"]
    assert _complete(bash_script, "cftool continue --recipe ") == ["mergetune-coop"]
    assert _complete(bash_script, "cftool eval --zs ti") == ["tiny"]
    assert _complete(bash_script, "cftool delta ap") == ["apply"]
    assert _complete(bash_script, "cftool completion ") == ["bash", "zsh", "fish"]
    assert _complete(bash_script, "cftool recipes zscl-mtil") == ["zscl-mtil", "zscl-mtil-few-shot"]
    assert _complete(bash_script, "cftool eval --format ") == ["table", "markdown", "latex", "csv", "json"]
    assert _complete(bash_script, "cftool import --format ") == ["auto", "open_clip", "coop", "condu"]
    assert _complete(bash_script, "cftool delta apply --sc") == ["--scale"]
    assert _complete(bash_script, "cftool finetune --shots ") == []  # a number: nothing to offer


def test_bash_completes_data_specs_across_the_colon(bash_script, tmp_path):
    """Bash splits words at ':', so a reply is what follows the colon already typed."""
    assert _complete(bash_script, "cftool eval --data co") == ["coop:"]
    assert _complete(bash_script, "cftool eval --data toy:f") == ["flowers", "food"]
    (tmp_path / "images").mkdir()
    assert _complete(bash_script, "cftool eval --data folder:im", cwd=tmp_path) == ["images"]


def test_bash_completes_file_names(bash_script, tmp_path):
    (tmp_path / "coop.safetensors").touch()
    assert _complete(bash_script, "cftool inspect co", cwd=tmp_path) == ["coop.safetensors"]
    assert _complete(bash_script, "cftool finetune -o co", cwd=tmp_path) == ["coop.safetensors"]
    assert _complete(bash_script, "cftool eval --zs coop", cwd=tmp_path) == ["coop.safetensors"]


@pytest.mark.parametrize(("shell", "check"), [("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])])
def test_zsh_and_fish_scripts_parse(shell, check, tmp_path):
    if shutil.which(check[0]) is None:
        pytest.skip(f"{shell} is not installed here")
    path = tmp_path / f"cftool.{shell}"
    path.write_text(_script(shell))
    result = subprocess.run([*check, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_an_unknown_shell_is_one_line(cli):
    result = cli("completion", "tcsh")
    assert result.code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr


def test_generating_a_script_imports_neither_torch_nor_open_clip():
    code = (
        "import sys; from cftool.cli import main; main(['completion', 'bash']); "
        "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert result.stderr.strip().splitlines()[-1] == "[]"


def test_free_text_options_name_their_offered_values_in_help():
    import typer

    from cftool.cli import app

    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="cftool")
    helps = {
        option: param.help
        for name in group.list_commands(ctx)
        for param in group.get_command(ctx, name).get_params(ctx)
        for option in param.opts
        if option in TEXT_CHOICES
    }
    assert set(helps) == set(TEXT_CHOICES)
    for option, values in TEXT_CHOICES.items():
        assert all(value in helps[option] for value in values), option


def test_model_names_include_tiny_and_open_clip_architectures():
    names = completions.model_names()
    assert names[0] == "tiny" and "ViT-B-16" in names


def test_fish_completes_values(tmp_path):
    """fish answers `complete -C LINE` without a terminal: the candidates a Tab would show."""
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed here")
    path = tmp_path / "cftool.fish"
    path.write_text(_script("fish"))

    def candidates(line: str) -> list[str]:
        result = subprocess.run(
            ["fish", "--no-config", "-c", f"source {path}; complete -C {line!r}"], capture_output=True, text=True
        )
        return sorted(candidate.split("\t")[0] for candidate in result.stdout.splitlines())

    assert candidates("cftool ev") == ["eval"]
    assert candidates("cftool eval --benchmark ") == sorted(BENCHMARKS)
    assert candidates("cftool finetune --data toy:f") == ["toy:flowers", "toy:food"]
