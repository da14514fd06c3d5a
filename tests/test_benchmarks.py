"""The benchmark scripts run as documented and report what they claim to measure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_continue_speed_reports_the_step_time_ratio_of_its_two_runs():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "continue_speed.py"), "--data", "toy:food", "--shots", "2", "--epochs", "2",
         "--repeats", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    coop, continued = report["runs"]
    assert (coop["run"], continued["run"]) == ("coop", "continue")
    assert coop["steps"] == continued["steps"] > 0
    assert len(coop["every_repeat"]) == len(continued["every_repeat"]) == 2
    assert coop["train_images_per_second"] == max(coop["every_repeat"])
    ratio = coop["train_images_per_second"] / continued["train_images_per_second"]
    assert report["step_time_ratio"] == pytest.approx(ratio, abs=0.01)
    assert report["mergetune"]["lmc_samples"] == [round(0.1 * i, 1) for i in range(1, 11)]


def test_route_cost_counts_the_passes_of_routing_against_every_expert():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "route_cost.py"), "--images-per-task", "3", "--train-images", "20",
         "--threads", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout)
    images, experts = report["images"], report["experts"]
    assert (images, experts, report["top_k"]) == (33, 11, 1)
    assert report["passes"] == {"routed": 2 * images, "every expert": (experts + 1) * images}
    assert report["pass_ratio"] == round(2 / 12, 4) and report["identical_predictions"] and report["meets_target"]
    assert sum(report["routed_to"].values()) == images
