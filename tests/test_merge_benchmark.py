"""benchmarks/unify_memory.py at a reduced size: it runs as documented and reports what it claims to measure."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).parent.parent / "benchmarks" / "unify_memory.py"


def test_unify_memory_benchmark_runs_reduced(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--tasks", "3", "--shrink", "64", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["tasks"] == 3 and report["parameters_per_delta"] > 1_000_000
    runs = {(run["method"], run["mode"]): run for run in report["runs"]}
    assert set(runs) == {(m, mode) for m in ("condu", "ties") for mode in ("streaming", "loaded")}
    for method in ("condu", "ties"):
        streaming, loaded = runs[method, "streaming"], runs[method, "loaded"]
        assert streaming["same_output_as_loaded"] is True
        assert streaming["time_ratio"] == round(streaming["seconds"] / loaded["seconds"], 3)
        assert 0.2 < streaming["peak_rss_gb"] < report["targets"]["streaming_peak_rss_gb"]
    assert abs(report["trigger_bytes_per_parameter"] - 0.125) < 1e-4
    assert set(report["targets_met"]) == set(report["targets"])
    assert list(tmp_path.iterdir()) == []  # the scratch deltas are removed
