"""Start-up cost of the CLI: wall time of `cftool --help`, shell completion and `cftool inspect` on a small file,
each against `python -c pass` measured in the same run, and which heavy libraries each imports.

    .venv/bin/python benchmarks/startup.py [--repeats 5]

Prints JSON: per case the median seconds over the repeats, the ratio to `python -c pass`, the seconds above it, and
whether torch and open_clip were imported. Targets (issue 14): --help and completion ≤ 0.5 s, inspect ≤ 1.5 s and
without open_clip.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = {"help": 0.5, "completion": 0.5, "inspect": 1.5}
# Run in the child process after the case: which heavy modules the command loaded.
_REPORT_MODULES = "import sys; print(' '.join(m for m in ('torch', 'open_clip') if m in sys.modules), file=sys.stderr)"


def _case_code(argv: list[str]) -> str:
    return (
        "import sys\nfrom cftool.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n{_REPORT_MODULES}\n"
    )


def _time(command: list[str], env: dict[str, str], repeats: int) -> tuple[float, str]:
    times, imported = [], ""
    for _ in range(repeats):
        began = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        times.append(time.perf_counter() - began)
        imported = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return statistics.median(times), imported


def _small_file(folder: Path) -> Path:
    """A small safetensors file with cftool metadata, written without importing cftool's torch-side modules."""
    path = folder / "small.safetensors"
    subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import torch, sys; from cftool.io.checkpoint import Header, save_checkpoint; "
                "save_checkpoint(sys.argv[1], {'ctx': torch.zeros(4, 8)}, Header(kind='prompt', base='tiny'))"
            ),
            str(path),
        ],
        check=True,
    )
    return path


def _completion_script() -> str:
    code = "from cftool.cli import main; main(['completion', 'bash'])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory() as folder:
        small = _small_file(Path(folder))
        baseline, _ = _time([sys.executable, "-c", "pass"], env, args.repeats)
        # Completion is the static script `cftool completion bash` prints: a Tab runs bash, never Python.
        script = Path(folder) / "cftool.bash"
        script.write_text(_completion_script())
        complete = f"source {script}; COMP_LINE='cftool fi'; _cftool; echo ${{COMPREPLY[@]}} >&2"
        cases = {
            "help": ([sys.executable, "-c", _case_code(["--help"])], env),
            "completion": (["bash", "-c", complete], env),
            "inspect": ([sys.executable, "-c", _case_code(["inspect", str(small)])], env),
        }
        report = {"python_pass_seconds": round(baseline, 3), "repeats": args.repeats, "cases": {}}
        for name, (command, case_env) in cases.items():
            seconds, imported = _time(command, case_env, args.repeats)
            report["cases"][name] = {
                "seconds": round(seconds, 3),
                "ratio_to_python": round(seconds / baseline, 2),
                "above_python_seconds": round(seconds - baseline, 3),
                "imports_torch": "torch" in imported.split(),
                "imports_open_clip": "open_clip" in imported.split(),
                "target_seconds": TARGET_SECONDS[name],
                "meets_target": seconds <= TARGET_SECONDS[name],
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
