"""Pictures (the optional `plot` extra: matplotlib): loss and accuracy along a linear path between two models, and
MTIL accuracy matrices."""

from __future__ import annotations

from pathlib import Path

from cftool.io.outputs import atomic_output


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


def plot_matrices(report: dict, output: Path, overwrite: bool) -> Path:
    """One heatmap per session sequence of an `eval --sessions` report: session (rows) by task (columns), top-1 %
    written in each cell; the cells above the diagonal are tasks not yet learned (Transfer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = report["tasks"], report["methods"]
    panel = 0.5 * len(tasks) + 1.0
    figure, axes = plt.subplots(
        1, len(methods), figsize=(panel * len(methods) + 2.5, 0.45 * len(tasks) + 2.2), squeeze=False, sharey=True
    )
    for index, (ax, method) in enumerate(zip(axes[0], methods, strict=True)):
        matrix = method["matrix"]
        image = ax.imshow(matrix, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for t, row in enumerate(matrix):
            for j, value in enumerate(row):
                colour = "white" if value < 60 else "black"
                ax.text(j, t, f"{value:.0f}", ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("evaluated on")
        if index == 0:
            ax.set_yticks(range(len(matrix)), [f"{t + 1} {tasks[t]}" for t in range(len(matrix))], fontsize=8)
            ax.set_ylabel("after session")
        title = f"{method['method']}\nAverage {method['average_mean']:.1f}, Last {method['last_mean']:.1f}"
        ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="top-1 %")
    figure.suptitle(f"MTIL accuracy matrix ({report['mode']}, {report['split']} split)", y=1.04)
    with atomic_output(output, overwrite) as temp:
        figure.savefig(temp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return output


def _short(label: str) -> str:
    return "zero-shot" if label == "zs" else Path(label).name.removesuffix(".safetensors")
