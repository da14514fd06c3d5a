"""`cftool recipes`: the official recipes `--recipe` names, where each comes from, and their options."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cftool.cli.common import console


def recipes_command(
    name: Annotated[str | None, typer.Argument(help="A recipe to print in full (its YAML file).")] = None,
) -> None:
    """List the official recipes that `finetune --recipe` and `continue --recipe` take, or print one.

    Example: cftool recipes zscl-mtil
    """
    from importlib import resources

    from cftool.recipes import load_recipe, recipe_names

    if name is not None:
        load_recipe(name)  # an unknown name is refused with the known ones
        print(resources.files("cftool.recipes").joinpath(f"{name}.yaml").read_text(encoding="utf-8"), end="")
        return
    table = Table("recipe", "command", "what", "official source")
    for recipe in map(load_recipe, recipe_names()):
        table.add_row(recipe.name, recipe.command, recipe.summary, recipe.reference)
    console.print(table)
