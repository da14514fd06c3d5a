"""The benchmark scripts run as documented and report what they claim to measure."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_finetune_speed_trains_the_same_prompt_with_and_without_the_feature_cache():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "finetune_speed.py"), "--shots", "2", "--epochs", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(result.stdout)
    cached, uncached = report["runs"]
    assert (cached["feature_cache"], uncached["feature_cache"]) == (True, False)
    assert cached["steps"] == uncached["steps"] > 0
    assert cached["final_loss"] == uncached["final_loss"]
    ratio = cached["train_images_per_second"] / uncached["train_images_per_second"]
    assert report["train_speedup"] == round(ratio, 2)
