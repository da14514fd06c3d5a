"""Commands of DESIGN §2 that later versions fill in: present in `--help`, a one-line refusal when run."""

from __future__ import annotations

import typer

from cftool.errors import NotAvailableError

PENDING_COMMANDS = {
    "route": "Predict with task experts chosen per image by prototype similarity.",
}


def register_pending(app: typer.Typer) -> None:
    for name, summary in PENDING_COMMANDS.items():
        app.command(
            name,
            help=f"{summary} (not available yet)",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
            add_help_option=False,
        )(_refusal(name))


def _refusal(name: str):
    def refuse(ctx: typer.Context) -> None:
        raise NotAvailableError(f"`cftool {name}` is not available in this version of cftool yet")

    refuse.__name__ = f"{name}_command"
    return refuse
