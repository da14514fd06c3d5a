"""Pictures (the optional `plot` extra: matplotlib): loss and accuracy along a linear path between two models, and
MTIL accuracy matrices, in the format the output's suffix names (PNG, or PDF and SVG for a paper)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from cftool.errors import CftoolError
from cftool.io.outputs import atomic_output
from cftool.options import ALL_CLASSES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# matplotlib writes PGF text only through a LaTeX install, which a refusal after the evaluation would waste.
_NEEDS_LATEX = {"pgf"}

# The heatmap's sizes: the smallest text in points and a cell's side in inches. Two panels of eleven tasks side by
# side make a figure about 7.7 in wide, whose 7 pt text stays above 6 pt when scaled to a 7 in page width.
FONT = 7.0
CELL = 0.25
PANELS_PER_ROW = 2


def figure_format(flag: str, output: Path) -> str:
    """The format ``output``'s suffix names (``png``, ``pdf``, ``svg``, … as matplotlib writes them); a missing
    matplotlib or a suffix it cannot write is refused here, which the command calls before any work."""
    try:
        import matplotlib  # noqa: F401 (the plot extra)
    except ImportError:
        raise CftoolError(
            f"{flag} needs matplotlib: pip install 'cftool-clip[plot]' (from a checkout: pip install '.[plot]'; or "
            "pip install matplotlib)"
        ) from None
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - _NEEDS_LATEX)
    suffix = output.suffix.removeprefix(".").lower()
    if suffix not in formats:
        found = f"the suffix .{suffix} is not a figure format" if suffix else "the file name has no suffix"
        raise CftoolError(
            f"{flag} {output}: {found}; end the name with one of {', '.join('.' + name for name in formats)} "
            "(e.g. .pdf or .svg for a paper, .png for a screen)"
        )
    return suffix


def plot_path(report: dict, output: Path, overwrite: bool) -> Path:
    """Draw `path_figure` into ``output`` (`eval --path --plot`)."""
    return _save(path_figure(report), "--plot", output, overwrite)


def plot_matrices(report: dict, output: Path, overwrite: bool) -> Path:
    """Draw `matrices_figure` into ``output`` (`eval --sessions --heatmap`)."""
    return _save(matrices_figure(report), "--heatmap", output, overwrite)


def path_figure(report: dict) -> Figure:
    """Two panels against α, loss and top-1, one line per task (or class half) of an `eval --path` report; each
    curve's loss barrier, where it has one, is marked on the loss panel above the straight line between its ends."""
    from matplotlib.figure import Figure

    path, alphas = report["path"], report["alphas"]
    ends = f"{_short(path['a'])} → {_short(path['b'])}"
    figure = Figure(figsize=(7.5, 3.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for curve in report["curves"]:
        label = curve["task"] + ("" if curve["classes"] == ALL_CLASSES else f" ({curve['classes']})")
        barrier = "" if math.isnan(curve["barrier"]) else f", barrier {curve['barrier']:.3f}"
        [line] = loss_axes.plot(alphas, curve["loss"], marker="o", markersize=3, label=label + barrier)
        accuracy_axes.plot(alphas, curve["accuracy"], marker="o", markersize=3, label=label, color=line.get_color())
        _mark_barrier(loss_axes, alphas, curve, line.get_color())
    loss_axes.margins(y=0.15)  # room above the highest barrier's value
    for axes, name in ((loss_axes, "cross-entropy loss"), (accuracy_axes, "top-1 accuracy (%)")):
        axes.set_xlabel(f"α   ({ends})")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(f"linear path {ends} ({path['kind']}, {report['split']} split)")
    return figure


def _mark_barrier(axes: Axes, alphas: list[float], curve: dict, colour) -> None:
    """The straight line between the curve's ends, and at the barrier's α a marker on the curve, a dashed rise from
    the line to it and the barrier's value. A curve that never rises above the line (barrier 0) gets none."""
    barrier = curve["barrier"]
    if not barrier > 0:  # 0, or NaN (a class half with no images)
        return
    loss = curve["loss"]
    alpha = curve["barrier_alpha"]
    peak = loss[alphas.index(alpha)]
    axes.plot([alphas[0], alphas[-1]], [loss[0], loss[-1]], linestyle=":", linewidth=1, color=colour)
    axes.vlines(alpha, peak - barrier, peak, linestyles="--", linewidth=1, colors=colour)
    axes.plot([alpha], [peak], marker="v", markersize=7, linestyle="none", color=colour)
    axes.annotate(
        f"barrier {barrier:.3f}", (alpha, peak), xytext=(5, 5), textcoords="offset points", fontsize=8, color=colour
    )


def matrices_figure(report: dict) -> Figure:
    """One heatmap per session sequence of an `eval --sessions` report, at most two side by side: session (rows)
    by task (columns), top-1 % written in each cell. The cells above the diagonal, tasks not yet learned (what
    Transfer averages), are grey; the others share one colour scale, from the lowest to the highest of them."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    tasks, methods = report["tasks"], report["methods"]
    matrices = [_learned_cells(method["matrix"]) for method in methods]
    values = np.concatenate([matrix.compressed() for matrix in matrices])
    norm = Normalize(vmin=float(values.min()), vmax=float(values.max()))
    colours = colormaps["viridis"].with_extremes(bad="0.85")
    columns = min(len(methods), PANELS_PER_ROW)
    rows = math.ceil(len(methods) / columns)
    sessions = max(len(matrix) for matrix in matrices)
    width = 1.3 + columns * len(tasks) * CELL + 0.8
    height = rows * (sessions * CELL + 1.4) + 0.3
    figure = Figure(figsize=(width, height), layout="compressed")
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index >= len(methods):
            axes.remove()
            continue
        _draw_matrix(axes, methods[index], matrices[index], tasks, norm, colours, first_column=index % columns == 0)
    panels = grid.flat[: len(methods)].tolist()
    colour_bar = figure.colorbar(ScalarMappable(norm, colours), ax=panels, shrink=0.9, fraction=0.03, pad=0.02)
    colour_bar.set_label("top-1 % (tasks learned)", fontsize=FONT)
    colour_bar.ax.tick_params(labelsize=FONT)
    figure.suptitle(f"MTIL accuracy matrix ({report['mode']}, {report['split']} split)", fontsize=FONT + 1.5)
    return figure


def _learned_cells(matrix: list[list[float]]):
    """``matrix`` (session t by task j) with the cells of tasks not yet learned (j > t) masked."""
    import numpy as np

    values = np.array(matrix, dtype=float)
    session, task = np.indices(values.shape)
    return np.ma.masked_array(values, mask=task > session)


def _draw_matrix(axes: Axes, method: dict, matrix, tasks: list[str], norm, colours, first_column: bool) -> None:
    """One method's heatmap: each cell's value in black on the light end of the scale, white on the dark end, dark
    grey on a grey (not yet learned) cell."""
    axes.imshow(matrix, norm=norm, cmap=colours)
    for t, row in enumerate(matrix.data):
        for j, value in enumerate(row):
            colour = "0.3" if matrix.mask[t, j] else "black" if norm(value) > 0.5 else "white"
            axes.text(j, t, f"{value:.0f}", ha="center", va="center", fontsize=FONT, color=colour)
    axes.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize=FONT)
    axes.set_xlabel("evaluated on", fontsize=FONT)
    sessions = range(len(matrix))
    axes.set_yticks(sessions, [f"{t + 1} {tasks[t]}" for t in sessions] if first_column else [], fontsize=FONT)
    if first_column:
        axes.set_ylabel("after session", fontsize=FONT)
    axes.tick_params(length=2, pad=2)
    title = f"{method['method']}: Average {method['average_mean']:.1f}, Last {method['last_mean']:.1f}"
    axes.set_title(title, fontsize=FONT + 0.5)


def _short(label: str) -> str:
    return "zero-shot" if label == "zs" else Path(label).name.removesuffix(".safetensors")


def _save(figure: Figure, flag: str, output: Path, overwrite: bool) -> Path:
    """``figure`` into ``output`` in its suffix's format; PDF and PostScript with TrueType fonts (Type 42), which
    publishers' checks accept where they refuse matplotlib's default Type 3."""
    import matplotlib

    file_format = figure_format(flag, output)
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}), atomic_output(output, overwrite) as temp:
        figure.savefig(temp, format=file_format, dpi=150, bbox_inches="tight")
    return output
