"""Pictures (the optional `plot` extra: matplotlib): loss and accuracy along a linear path between two models."""

from __future__ import annotations

from pathlib import Path

from cftool.io.checkpoint import atomic_output


def plot_path(report: dict, output: Path, overwrite: bool) -> Path:
    """Two panels against α, loss and top-1, one line per task (or class half) of an `eval --path` report."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    path = report["path"]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for curve in report["curves"]:
        label = curve["task"] + ("" if curve["classes"] == "all" else f" ({curve['classes']})")
        loss_axes.plot(report["alphas"], curve["loss"], marker="o", markersize=3, label=label)
        accuracy_axes.plot(report["alphas"], curve["accuracy"], marker="o", markersize=3, label=label)
    for axes, name in ((loss_axes, "cross-entropy loss"), (accuracy_axes, "top-1 accuracy (%)")):
        axes.set_xlabel(f"α   ({_short(path['a'])} → {_short(path['b'])})")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize="small")
    figure.suptitle(f"linear path {_short(path['a'])} → {_short(path['b'])} ({path['kind']}, {report['split']} split)")
    with atomic_output(output, overwrite) as temp:
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)
    return output


def _short(label: str) -> str:
    return "zero-shot" if label == "zs" else Path(label).name.removesuffix(".safetensors")
