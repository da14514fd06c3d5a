"""The example scripts run as a user would run them, with `cftool` on PATH."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
# Studies over every task and seed run here on one task and one seed (their full runs are recorded in RESULTS.md).
REDUCED = {
    "base2new_mergetune.sh": {"TASKS": "flowers", "SEEDS": "0"},
    "condu_mtil_tiny.sh": {"TASKS": "aircraft caltech101 cifar100", "ITERATIONS": "5"},
}


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.sh")))
def test_example_runs(script, tmp_path):
    env = {
        **os.environ,
        **REDUCED.get(script, {}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", str(EXAMPLES / script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
