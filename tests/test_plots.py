"""`eval --plot` and `eval --heatmap` from hand-built reports (no model): formats by suffix, the loss barrier, named
path ends, and heatmaps with greyed cells, scaled colours and text that stays readable in a paper."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from conftest import never_runs, one_line_error

from cftool.errors import CftoolError
from cftool.eval.compare import split_label
from cftool.eval.plots import figure_format, matrices_figure, path_figure, plot_matrices, plot_path
from cftool.metrics import loss_barrier

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF"}

PATH = {
    "path": {"a": "coop", "b": "mt", "kind": "prompt", "files": {"a": "c.safetensors", "b": "m.safetensors"}},
    "split": "test",
    "alphas": [0.0, 0.5, 1.0],
    "curves": [
        {
            "task": "flowers",
            "classes": "base",
            "loss": [2.0, 4.0, 2.0],
            "accuracy": [70.0, 40.0, 75.0],
            "max_loss": 4.0,
            "barrier": 2.0,
            "barrier_alpha": 0.5,
        },
        {
            "task": "flowers",
            "classes": "novel",
            "loss": [2.4, 2.2, 2.3],
            "accuracy": [60.0, 62.0, 58.0],
            "max_loss": 2.4,
            "barrier": 0.0,
            "barrier_alpha": 0.0,
        },
    ],
}

TASKS = [
    "aircraft",
    "caltech101",
    "cifar100",
    "dtd",
    "eurosat",
    "flowers",
    "food",
    "mnist",
    "oxford_pet",
    "stanford_cars",
    "sun397",
]


def mtil_report(n_methods: int, n_tasks: int = len(TASKS)) -> dict:
    """Matrices whose learned cells (j ≤ t) run from 30 to 80 and whose others are 5 (below every learned one)."""
    methods = []
    for index in range(n_methods):
        matrix = [
            [30.0 + 50.0 * (t + j) / (2 * n_tasks - 2) if j <= t else 5.0 for j in range(n_tasks)]
            for t in range(n_tasks)
        ]
        matrix[0][0] -= index  # each method its own lowest value
        methods.append({"method": f"method {index}", "matrix": matrix, "average_mean": 50.0, "last_mean": 60.0})
    return {"tasks": TASKS[:n_tasks], "methods": methods, "mode": "task-id", "split": "test"}


def test_the_barrier_is_the_highest_rise_above_the_line_between_the_ends():
    assert loss_barrier([0.0, 0.5, 1.0], [1.0, 3.0, 1.0]) == (2.0, 0.5)
    # The line from 1 to 2 is 1 + α: the rises are 0, 1.25, 0.5, -0.25 and 0.
    assert loss_barrier([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 2.5, 2.0, 1.5, 2.0]) == (1.25, 0.25)


def test_a_convex_or_straight_path_has_no_barrier():
    assert loss_barrier([0.0, 0.5, 1.0], [2.0, 1.0, 2.0]) == (0.0, 0.0)
    assert loss_barrier([0.0, 0.5, 1.0], [1.0, 2.0, 3.0]) == (0.0, 0.0)


def test_a_path_with_a_missing_loss_has_no_barrier_value():
    assert all(math.isnan(value) for value in loss_barrier([0.0, 1.0], [1.0, math.nan]))


@pytest.mark.parametrize("suffix", ["pdf", "svg", "png", "PDF"])
def test_each_figure_is_written_in_the_format_its_suffix_names(tmp_path, suffix):
    for draw, report in ((plot_path, PATH), (plot_matrices, mtil_report(2, 3))):
        output = tmp_path / f"{draw.__name__}.{suffix}"
        assert draw(report, output, False) == output
        data = output.read_bytes()
        if suffix.lower() == "svg":
            assert "<svg" in data.decode()
        else:
            assert data.startswith(MAGIC[suffix.lower()])


def test_a_suffix_matplotlib_cannot_write_is_one_line_naming_the_flag_the_file_and_the_formats(tmp_path):
    output = tmp_path / "new" / "figure.docx"
    with pytest.raises(CftoolError) as error:
        plot_path(PATH, output, False)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--plot {output}: the suffix .docx is not a figure format")
    assert all(suffix in message for suffix in (".pdf", ".svg", ".png"))
    assert not (tmp_path / "new").exists()  # nothing written, not even the folder
    with pytest.raises(CftoolError, match="--heatmap .*has no suffix"):
        figure_format("--heatmap", tmp_path / "matrix")


@pytest.mark.parametrize(
    ("flag", "args"),
    [
        ("--plot", ["--path", "zs", "zs", "--plot", "{new}/p.docx"]),
        ("--heatmap", ["--sessions", "zs", "--heatmap", "{new}/h.txt"]),
        ("--plot", ["--path", "zs", "zs", "--plot", "{new}/p.tex", "-o", "{new}/r.json", "--cache-dir", "{new}/c"]),
    ],
    ids=["plot", "heatmap", "plot-beside-other-outputs"],
)
def test_eval_refuses_a_figure_format_before_any_work_and_writes_nothing(cli, tmp_path, monkeypatch, flag, args):
    monkeypatch.setattr("cftool.zoo.load_model", never_runs("loading the model"))
    new = tmp_path / "new"
    line = one_line_error(cli("eval", "--zs", "tiny", "--data", "toy:mnist", *[arg.format(new=new) for arg in args]))
    assert line.startswith(f"error: {flag} {new}/") and "is not a figure format" in line and ".pdf" in line
    assert not new.exists()  # not even the folders of the other outputs


def test_the_path_plot_marks_each_barrier_and_names_the_ends_by_their_labels():
    figure = path_figure(PATH)
    loss_axes, accuracy_axes = figure.axes
    assert [text.get_text() for text in loss_axes.texts] == ["barrier 2.000"]  # the convex curve has none
    peaks = [line for line in loss_axes.lines if line.get_marker() == "v"]
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in peaks] == [([0.5], [4.0])]
    legends = [[text.get_text() for text in axes.get_legend().get_texts()] for axes in (loss_axes, accuracy_axes)]
    assert legends == [
        ["flowers (base), barrier 2.000", "flowers (novel), barrier 0.000"],
        ["flowers (base)", "flowers (novel)"],
    ]
    assert all("coop → mt" in axes.get_xlabel() for axes in figure.axes)
    assert loss_axes.get_ylim()[0] > 1.5  # where the losses are (2.0 to 4.0), not from 0


def test_a_heatmap_greys_the_tasks_not_yet_learned_and_scales_its_colours_to_the_learned_ones():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    report = mtil_report(2, 4)
    figure = matrices_figure(report)
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == 2
    [image] = panels[0].images
    session, task = np.indices((4, 4))
    assert (image.get_array().mask == (task > session)).all()
    assert (image.norm.vmin, image.norm.vmax) == (29.0, 80.0)  # method 1's lowest learned cell, the highest one
    colour_bar = figure.axes[-1]
    assert colour_bar not in panels and "top-1" in colour_bar.get_ylabel()
    assert [float(tick) for tick in colour_bar.get_yticks() if 29 <= tick <= 80] == [30, 40, 50, 60, 70, 80]
    # The drawn picture: the corner of a cell above the diagonal is grey, one of a learned cell is not.
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]

    def colour_at(axes, t: int, j: int) -> tuple[int, ...]:
        x, y = axes.transData.transform((j - 0.35, t - 0.35))  # away from the written value
        return tuple(int(value) for value in pixels[pixels.shape[0] - round(y), round(x)])

    for t in (0, 2):
        assert all(abs(value - 0.85 * 255) <= 1 for value in colour_at(panels[1], t, 3))  # matplotlib's grey 0.85
    assert len(set(colour_at(panels[1], 3, 3))) > 1  # a viridis colour


@pytest.mark.parametrize("n_methods", [1, 2, 3])
def test_a_heatmap_of_eleven_tasks_stays_readable_at_a_papers_width(tmp_path, n_methods):
    """Scaled to a 7 in wide page, no text is under 6 pt; more than two methods go on further rows."""
    from matplotlib.text import Text

    output = tmp_path / "matrix.pdf"
    plot_matrices(mtil_report(n_methods), output, False)
    width = float(re.search(rb"/MediaBox \[ *0 0 ([\d.]+)", output.read_bytes()).group(1)) / 72
    figure = matrices_figure(mtil_report(n_methods))
    smallest = min(text.get_fontsize() for text in figure.findobj(Text) if text.get_text() and text.get_visible())
    assert smallest * min(1.0, 7 / width) >= 6
    assert len({round(axes.get_position().y0, 2) for axes in figure.axes if axes.images}) == math.ceil(n_methods / 2)


def test_label_file_names_a_path_end_unless_the_whole_is_a_file_or_the_label_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert split_label("coop=c.safetensors") == ("coop", "c.safetensors")
    assert split_label("c.safetensors") == (None, "c.safetensors")
    assert split_label("runs/a=b.safetensors") == (None, "runs/a=b.safetensors")
    (tmp_path / "lr=0.1.safetensors").write_bytes(b"")
    assert split_label("lr=0.1.safetensors") == (None, "lr=0.1.safetensors")
    assert split_label("lr=0.2.safetensors") == ("lr", "0.2.safetensors")
