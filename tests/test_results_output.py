"""Results on stdout, everything else on stderr: `cftool eval … > out.txt` keeps the table, `--quiet` keeps stderr
for errors, and each --format is what its reader expects."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys

import pytest

EVAL = ("eval", "--zs", "tiny", "--data", "toy:food")


def test_eval_redirected_to_a_file_leaves_the_table_there(tmp_path):
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "cftool", *EVAL],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=True,
        )
    table = out.read_text()
    assert "top-1 % on toy:food" in table and "food" in table and "zero-shot" in table
    assert "top-1" not in done.stderr and "zero-shot" not in done.stderr


def test_quiet_leaves_stderr_to_errors(cli, tmp_path):
    written = tmp_path / "report.json"
    result = cli(*EVAL, "--quiet", "--log-every", "1", "-o", written)
    assert result.code == 0 and result.stderr == "" and "zero-shot" in result.stdout and written.is_file()
    refused = cli(*EVAL, "-q", "-o", written)  # exists: an error prints under --quiet too
    assert refused.code != 0 and refused.stderr.startswith("error:")


def test_quiet_silences_warnings_and_lasts_one_command(cli):
    from cftool.cli.common import console, set_quiet

    set_quiet(True)
    assert console.quiet and logging.getLogger().level == logging.ERROR
    assert cli("inspect", "--help").code == 0  # `main` ends every command unquiet
    assert not console.quiet and logging.getLogger().level == logging.WARNING


def test_csv_parses_with_one_header_row(cli):
    result = cli(*EVAL, "--format", "csv")
    assert result.code == 0, result.stderr
    header, *rows = list(csv.reader(io.StringIO(result.stdout)))
    assert header == ["task", "classes", "model", "top-1"]
    assert rows == [["food", "6", "zero-shot", rows[0][3]]]  # one task: no mean block repeating it
    assert float(rows[0][3]) > 0


@pytest.mark.parametrize("flag", [("--format", "json"), ("--json",)])
def test_json_is_all_stdout_holds(cli, flag):
    result = cli(*EVAL, *flag)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["model"] == "zero-shot"


def test_markdown_and_latex_go_to_stdout(cli):
    markdown = cli(*EVAL, "--format", "markdown")
    assert markdown.code == 0 and "| task | classes | model | top-1 |" in markdown.stdout and markdown.stderr == ""
    latex = cli(*EVAL, "--format", "latex")
    assert latex.code == 0 and "\\toprule" in latex.stdout and "\\bottomrule" in latex.stdout


def test_an_unknown_or_conflicting_format_is_refused(cli):
    unknown = cli(*EVAL, "--format", "html")
    assert unknown.code == 2
    assert "'--format': 'html' is not one of 'table', 'markdown', 'latex', 'csv', 'json'" in unknown.stderr
    both = cli(*EVAL, "--json", "--format", "csv")
    assert both.code != 0 and "--json is --format json" in both.stderr


def test_inspect_prints_to_stdout_for_grep(cli, tmp_path):
    base = tmp_path / "base.safetensors"
    assert cli("export", "--zs", "tiny", "-o", base).code == 0
    result = cli("inspect", base, "--format", "csv")
    assert result.code == 0 and result.stderr == ""
    [header, row] = list(csv.reader(io.StringIO(result.stdout)))
    assert header[:2] == ["file", "kind"] and row[1] == "model"
