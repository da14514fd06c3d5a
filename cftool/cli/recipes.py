"""`cftool recipes`: the official recipes `--recipe` names, where each comes from, and their options."""

from __future__ import annotations

from typing import Annotated

import typer

from cftool.cli.common import QuietOption, emit_results, one_of, recipe_names
from cftool.cli.render import Column, ResultTable


def recipes_command(
    name: Annotated[
        one_of(recipe_names()) | None, typer.Argument(help="A recipe to print in full (its YAML file).", metavar="NAME")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """List the official recipes that `finetune --recipe` and `continue --recipe` take, or print one.

    Example: cftool recipes zscl-mtil
    """
    from importlib import resources

    from cftool.recipes import load_recipe

    if name is not None:
        print(resources.files("cftool.recipes").joinpath(f"{name}.yaml").read_text(encoding="utf-8"), end="")
        return
    rows = [
        [recipe.name, recipe.command, recipe.summary, recipe.reference] for recipe in map(load_recipe, recipe_names())
    ]
    columns = [Column(name, numeric=False) for name in ("recipe", "command", "what", "official source")]
    emit_results([ResultTable("", columns, [rows])], "table", None)
