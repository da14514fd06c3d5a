"""The example scripts run as a user would run them, with `cftool` on PATH."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
# Studies over every task and seed run here on one task (two sessions for the continual one) and one seed (their
# full runs are recorded in RESULTS.md).
REDUCED = {
    "base2new_mergetune.sh": {"TASKS": "flowers", "SEEDS": "0"},
    "condu_mtil_tiny.sh": {"TASKS": "aircraft caltech101", "ITERATIONS": "5"},  # sessions 1 and 2 cover every step
}


@pytest.mark.parametrize(
    "script",
    [pytest.param(p.name, marks=pytest.mark.xdist_group(p.name)) for p in sorted(EXAMPLES.glob("*.sh"))],
)
def test_example_runs(script, tmp_path):
    env = {
        **os.environ,
        **REDUCED.get(script, {}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    # OUT as a user passes it: relative to where they stand, and not there yet.
    result = subprocess.run(
        ["bash", str(EXAMPLES / script), "out"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert any((tmp_path / "out").iterdir()) and not (EXAMPLES / "out").exists()


# Each shipped config, the command it configures and the flags that shrink its run to the testbed (flags win).
CONFIGS = {
    "eval.yaml": ("eval", ["--zs", "tiny"]),
    "finetune.yaml": ("finetune", ["--epochs", "0.1"]),
}


def test_every_config_is_checked():
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(CONFIGS)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_example_configs_are_accepted_by_their_command(config, tmp_path):
    """Every key of a shipped config is an option of its command, with a value it accepts."""
    command, overrides = CONFIGS[config]
    output = ["-o", str(tmp_path / "out.safetensors")] if command == "finetune" else []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["cftool", command, "--config", str(EXAMPLES / config), *overrides, *output],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
