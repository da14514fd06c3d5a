"""Result tables in every `--format`: a command describes a table once (`ResultTable`) and this module writes it as
rich's terminal table, a GitHub markdown table, a booktabs LaTeX table or CSV. No torch here, and rich only for the
terminal table: `--help` and the rendering tests stay fast."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

FORMATS = ("table", "markdown", "latex", "csv", "json")


@dataclass(frozen=True)
class Column:
    """``group``: a header spanning this column and its neighbours of the same group (a model's or a curve's
    columns); the terminal and LaTeX write it above the names, markdown and CSV before each name."""

    name: str
    group: str | None = None
    numeric: bool = True  # right-aligned

    def label(self) -> str:
        return self.name if self.group is None else f"{self.group} {self.name}"


@dataclass
class ResultTable:
    """A title, columns, and rows in sections (a rule between two sections); ``notes`` are result lines printed
    after the table (not in CSV, which holds the rows alone)."""

    title: str
    columns: list[Column]
    sections: list[list[list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[list[str]]:
        return [row for section in self.sections for row in section]

    def _groups(self) -> list[tuple[str | None, int]]:
        """The runs of neighbouring columns with the same group, as (group, number of columns)."""
        runs: list[tuple[str | None, int]] = []
        for column in self.columns:
            if runs and column.group is not None and runs[-1][0] == column.group:
                runs[-1] = (column.group, runs[-1][1] + 1)
            else:
                runs.append((column.group, 1))
        return runs


def rich_table(table: ResultTable) -> Table:
    from rich.table import Table
    from rich.text import Text

    rich = Table(title=table.title or None)
    for column in table.columns:
        header = column.name if column.group is None else f"{column.group}\n{column.name}"
        rich.add_column(Text(header), justify="right" if column.numeric else "left")
    for index, section in enumerate(table.sections):
        if index:
            rich.add_section()
        for row in section:
            rich.add_row(*[Text(cell) for cell in row])  # Text: a file name with [brackets] is not markup
    return rich


def markdown(table: ResultTable) -> str:
    """A GitHub pipe table under its title in bold; sections are not marked (a pipe table has no rules)."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [f"**{table.title}**", ""] if table.title else []
    lines.append(line([column.label() for column in table.columns]))
    lines.append(line(["---:" if column.numeric else "---" for column in table.columns]))
    lines += [line(row) for row in table.rows()]
    if table.notes:
        lines += ["", *table.notes]
    return "\n".join(lines) + "\n"


# What LaTeX reads as commands, and the few non-ASCII signs the tables use, as LaTeX writes them.
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "α": r"$\alpha$",
    "→": r"$\to$",
    "…": r"\ldots{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(char, char) for char in text)


def latex(table: ResultTable) -> str:
    """A booktabs tabular in a table float with the title as its caption; grouped columns get a spanning header
    with a rule under it; a \\midrule between sections; notes as comments after it."""
    spec = "".join("r" if column.numeric else "l" for column in table.columns)
    lines = ["\\begin{table}", "\\centering"]
    if table.title:
        lines.append(f"\\caption{{{latex_escape(table.title)}}}")
    lines += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    groups = table._groups()
    if any(group is not None for group, _ in groups):
        spans, rules, first = [], [], 1
        for group, width in groups:
            if group is None:
                spans += [""] * width
            else:
                spans.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
                rules.append(f"\\cmidrule(lr){{{first}-{first + width - 1}}}")
            first += width
        lines.append(" & ".join(spans) + " \\\\")
        lines.append(" ".join(rules))
    lines.append(" & ".join(latex_escape(column.name) for column in table.columns) + " \\\\")
    for section in table.sections:
        lines.append("\\midrule")
        lines += [" & ".join(latex_escape(cell) for cell in row) + " \\\\" for row in section]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    lines += [f"% {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def csv_text(table: ResultTable) -> str:
    """One header row (a grouped column's header is ``group name``), then every row."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([column.label() for column in table.columns])
    writer.writerows(table.rows())
    return text.getvalue()


def render_text(tables: list[ResultTable], fmt: str, primary: int = -1) -> str:
    """``tables`` as markdown or LaTeX (each, a blank line between), or the ``primary`` one as CSV (CSV has one
    header row, so one table)."""
    if not tables:
        return ""
    if fmt == "csv":
        return csv_text(tables[primary])
    write = {"markdown": markdown, "latex": latex}[fmt]
    return "\n".join(write(table) for table in tables)
