"""Result tables in each --format, from fixed payloads (no model): the layouts the papers print."""

from __future__ import annotations

import csv
import io

from cftool.cli.evaluate import accuracy_table, mtil_tables, path_table
from cftool.cli.render import latex, latex_escape, markdown, render_text

MTIL = {
    "tasks": ["aircraft", "food_101", "cars"],
    "mode": "task-id",
    "label_space": "own",
    "top_k": 4,
    "zero_shot": True,
    "columns": [{"model": "zero-shot", "accuracy": [24.3, 88.4, 68.2], "mean": 60.3, "transfer_mean": 78.3}],
    "methods": [
        {
            "method": "ConDU",
            "matrix": [[62.0, 88.1, 68.9], [61.5, 93.4, 68.5], [60.9, 93.1, 89.6]],
            "transfer": [None, 88.1, 68.7],
            "transfer_mean": 78.4,
            "average": [61.47, 91.53, 75.67],
            "average_mean": 76.2,
            "last": [60.9, 93.1, 89.6],
            "last_mean": 81.2,
        },
        {
            "method": "ZSCL",
            "matrix": [[45.0, 86.0, 67.4], [43.2, 92.0, 66.0], [40.6, 92.2, 81.3]],
            "transfer": [None, 86.0, 66.7],
            "transfer_mean": 76.4,
            "average": [42.9, 90.1, 71.6],
            "average_mean": 68.2,
            "last": [40.6, 92.2, 81.3],
            "last_mean": 71.4,
        },
    ],
    "cells": {"measured": 21, "cached": 0},
}

MTIL_MARKDOWN = """\
**ConDU: top-1 % after each session (rows) on each task (columns)**

| after | aircraft | food_101 | cars |
| --- | ---: | ---: | ---: |
| 1 aircraft | 62.0 | 88.1 | 68.9 |
| 2 food_101 | 61.5 | 93.4 | 68.5 |
| 3 cars | 60.9 | 93.1 | 89.6 |

**ZSCL: top-1 % after each session (rows) on each task (columns)**

| after | aircraft | food_101 | cars |
| --- | ---: | ---: | ---: |
| 1 aircraft | 45.0 | 86.0 | 67.4 |
| 2 food_101 | 43.2 | 92.0 | 66.0 |
| 3 cars | 40.6 | 92.2 | 81.3 |

**MTIL on mtil-tiny (task-id, top-4 + zero-shot routing): top-1 %**

|  | method | aircraft | food_101 | cars | Average |
| --- | --- | ---: | ---: | ---: | ---: |
|  | zero-shot | 24.3 | 88.4 | 68.2 | 60.3 |
| Transfer | ConDU | - | 88.1 | 68.7 | 78.4 |
|  | ZSCL | - | 86.0 | 66.7 | 76.4 |
| Average | ConDU | 61.5 | 91.5 | 75.7 | 76.2 |
|  | ZSCL | 42.9 | 90.1 | 71.6 | 68.2 |
| Last | ConDU | 60.9 | 93.1 | 89.6 | 81.2 |
|  | ZSCL | 40.6 | 92.2 | 81.3 | 71.4 |

zero-shot over tasks 2…3, what Transfer compares with: 78.3
"""

MTIL_LATEX = r"""\begin{table}
\centering
\caption{MTIL on mtil-tiny (task-id, top-4 + zero-shot routing): top-1 \%}
\begin{tabular}{llrrrr}
\toprule
 & method & aircraft & food\_101 & cars & Average \\
\midrule
 & zero-shot & 24.3 & 88.4 & 68.2 & 60.3 \\
\midrule
Transfer & ConDU & - & 88.1 & 68.7 & 78.4 \\
 & ZSCL & - & 86.0 & 66.7 & 76.4 \\
\midrule
Average & ConDU & 61.5 & 91.5 & 75.7 & 76.2 \\
 & ZSCL & 42.9 & 90.1 & 71.6 & 68.2 \\
\midrule
Last & ConDU & 60.9 & 93.1 & 89.6 & 81.2 \\
 & ZSCL & 40.6 & 92.2 & 81.3 & 71.4 \\
\bottomrule
\end{tabular}
\end{table}
% zero-shot over tasks 2…3, what Transfer compares with: 78.3
"""


def _row(task: str, base_classes: int, values: tuple[float, float, float], std=None) -> dict:
    row = {
        "task": task,
        "num_base_classes": base_classes,
        "num_novel_classes": base_classes,
        **dict(zip(("base", "novel", "hm"), values, strict=True)),
    }
    if std is not None:
        row["std"] = dict(zip(("base", "novel", "hm"), std, strict=True))
    return row


BASE2NEW = {
    "models": [
        {
            "model": "zero-shot",
            "seeds": [],
            "results": [_row("aircraft", 2, (28.6, 28.0, 28.3)), _row("food", 3, (61.7, 53.5, 57.3))],
            "mean": {"base": 45.2, "novel": 40.8, "hm": 42.9},
        },
        {
            "model": "runs/seed{seed}/{task}/coop.safetensors",
            "seeds": [1, 2, 3],
            "results": [
                _row("aircraft", 2, (40.1, 20.5, 27.1), (1.2, 2.3, 0.8)),
                _row("food", 3, (80.0, 50.2, 61.7), (0.5, 1.0, 0.7)),
            ],
            "mean": {"base": 60.1, "novel": 35.4, "hm": 44.6, "std": {"base": 0.6, "novel": 1.1, "hm": 0.5}},
        },
    ]
}

BASE2NEW_MARKDOWN = """\
**top-1 % on base2new-tiny (mean±std over seeds)**

| task | classes | model | Base | Novel | HM |
| --- | ---: | --- | ---: | ---: | ---: |
| aircraft | 2+2 | zero-shot | 28.6 | 28.0 | 28.3 |
|  |  | coop | 40.1±1.2 | 20.5±2.3 | 27.1±0.8 |
| food | 3+3 | zero-shot | 61.7 | 53.5 | 57.3 |
|  |  | coop | 80.0±0.5 | 50.2±1.0 | 61.7±0.7 |
| mean |  | zero-shot | 45.2 | 40.8 | 42.9 |
|  |  | coop | 60.1±0.6 | 35.4±1.1 | 44.6±0.5 |
"""

BASE2NEW_LATEX = r"""\begin{table}
\centering
\caption{top-1 \% on base2new-tiny (mean$\pm$std over seeds)}
\begin{tabular}{lrlrrr}
\toprule
task & classes & model & Base & Novel & HM \\
\midrule
aircraft & 2+2 & zero-shot & 28.6 & 28.0 & 28.3 \\
 &  & coop & 40.1$\pm$1.2 & 20.5$\pm$2.3 & 27.1$\pm$0.8 \\
\midrule
food & 3+3 & zero-shot & 61.7 & 53.5 & 57.3 \\
 &  & coop & 80.0$\pm$0.5 & 50.2$\pm$1.0 & 61.7$\pm$0.7 \\
\midrule
mean &  & zero-shot & 45.2 & 40.8 & 42.9 \\
 &  & coop & 60.1$\pm$0.6 & 35.4$\pm$1.1 & 44.6$\pm$0.5 \\
\bottomrule
\end{tabular}
\end{table}
"""


def test_mtil_markdown_has_the_condu_layout():
    assert render_text(mtil_tables("mtil-tiny", MTIL), "markdown") == MTIL_MARKDOWN


def test_mtil_latex_has_the_condu_layout():
    assert latex(mtil_tables("mtil-tiny", MTIL)[-1]) == MTIL_LATEX


def test_mtil_csv_is_the_summary_with_one_header_row():
    rows = list(csv.reader(io.StringIO(render_text(mtil_tables("mtil-tiny", MTIL), "csv"))))
    assert rows[0] == ["", "method", "aircraft", "food_101", "cars", "Average"]
    assert rows[2] == ["Transfer", "ConDU", "-", "88.1", "68.7", "78.4"] and len(rows) == 8


def test_base2new_markdown_has_cocoops_layout():
    assert markdown(accuracy_table("base2new-tiny", BASE2NEW, base2new=True)) == BASE2NEW_MARKDOWN


def test_base2new_latex_has_cocoops_layout():
    assert latex(accuracy_table("base2new-tiny", BASE2NEW, base2new=True)) == BASE2NEW_LATEX


def test_latex_escapes_what_it_reads_as_commands():
    assert latex_escape("a_b 50% R&D #1") == r"a\_b 50\% R\&D \#1"


PATH = {
    "path": {"a": "zs", "b": "coop", "kind": "prompt", "files": {"a": None, "b": "runs/coop.st"}},
    "alphas": [0.0, 0.5, 1.0],
    "curves": [
        {
            "task": "food",
            "classes": "all",
            "loss": [1.0, 2.0, 0.5],
            "accuracy": [50.0, 40.0, 70.0],
            "max_loss": 2.0,
            "barrier": 1.25,
            "barrier_alpha": 0.5,
        }
    ],
}


def test_a_paths_columns_are_grouped_under_their_task():
    table = path_table("toy:food", PATH)
    text = latex(table)
    assert " & \\multicolumn{2}{c}{food} \\\\\n\\cmidrule(lr){2-3}\n$\\alpha$ & loss & top-1 \\\\" in text
    assert markdown(table).splitlines()[2] == "| α | food loss | food top-1 |"


def test_a_paths_table_ends_with_each_curves_barrier_and_its_alpha_under_the_ends_labels():
    table = path_table("toy:food", PATH)
    assert table.title == "loss and top-1 % along zs → coop (prompt) on toy:food"
    assert table.sections[-1] == [["max loss", "2.000", ""], ["barrier", "1.250", ""], ["barrier at α", "0.50", ""]]
    assert list(csv.reader(io.StringIO(render_text([table], "csv"))))[-1] == ["barrier at α", "0.50", ""]


def _plain(task: str, classes: int, accuracy: float) -> dict:
    return {"task": task, "num_classes": classes, "accuracy": accuracy}


# Checkpoint names longer than a terminal's share of a column each: the table gives each model a row.
PLAIN = {
    "models": [
        {
            "model": "zero-shot",
            "seeds": [],
            "results": [_plain("aircraft", 4, 28.6), _plain("food", 6, 61.7)],
            "mean": {"accuracy": 45.2},
        },
        {
            "model": "runs/coop.mergetune.lambda10.safetensors",
            "seeds": [],
            "results": [_plain("aircraft", 4, 40.1), _plain("food", 6, 80.0)],
            "mean": {"accuracy": 60.1},
        },
    ]
}

PLAIN_MARKDOWN = """\
**top-1 % on toy:aircraft, toy:food**

| task | classes | model | top-1 |
| --- | ---: | --- | ---: |
| aircraft | 4 | zero-shot | 28.6 |
|  |  | coop.mergetune.lambda10 | 40.1 |
| food | 6 | zero-shot | 61.7 |
|  |  | coop.mergetune.lambda10 | 80.0 |
| mean |  | zero-shot | 45.2 |
|  |  | coop.mergetune.lambda10 | 60.1 |
"""


def test_a_plain_accuracy_table_gives_each_model_a_row_in_every_format():
    table = accuracy_table("toy:aircraft, toy:food", PLAIN, base2new=False)
    assert markdown(table) == PLAIN_MARKDOWN
    text = latex(table)
    assert "\\begin{tabular}{lrlr}" in text and "task & classes & model & top-1 \\\\" in text
    assert " &  & coop.mergetune.lambda10 & 40.1 \\\\\n\\midrule\nfood & 6 & zero-shot & 61.7" in text
    rows = list(csv.reader(io.StringIO(render_text([table], "csv"))))
    assert rows[0] == ["task", "classes", "model", "top-1"] and len(rows) == 7
    assert rows[-1] == ["", "", "coop.mergetune.lambda10", "60.1"]


def test_a_terminal_of_100_columns_shows_each_models_whole_name():
    from rich.console import Console

    from cftool.cli.render import rich_table

    console = Console(width=100, record=True, file=io.StringIO())
    console.print(rich_table(accuracy_table("toy:aircraft, toy:food", PLAIN, base2new=False)))
    assert console.export_text().count("coop.mergetune.lambda10 ") == 3
