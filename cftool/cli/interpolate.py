"""`cftool interpolate`: one point of the linear path between two checkpoints, written as a checkpoint (WiSE-FT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cftool.cli.common import (
    ConfigOption,
    DeviceOption,
    ForceOption,
    JsonOption,
    QuietOption,
    console,
    emit_json,
    resolve_device,
)
from cftool.errors import CftoolError
from cftool.options import DEVICE


def interpolate_command(
    start: Annotated[str, typer.Argument(help="A, at α = 0: a checkpoint, or `zs` for the zero-shot model.")],
    end: Annotated[str, typer.Argument(help="B, at α = 1: a checkpoint of A's kind, or `zs`.")],
    alpha: Annotated[float, typer.Option("--alpha", help="α, where on the path: (1 − α)·A + α·B.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (the ends' kind).")],
    zs: Annotated[
        str | None,
        typer.Option("--zs", help="Base model.", show_default="the one the checkpoints record"),
    ] = None,
    device: DeviceOption = DEVICE,
    force: ForceOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
    config: ConfigOption = None,
) -> None:
    """Write the point (1 − α)·A + α·B of the path between two checkpoints of one kind, or zs and a checkpoint.

    Models and heads interpolate their weights, LoRA its merged weights (exactly, as LoRA factors); a prompt with zs
    mixes its class features with the zero-shot head's, which `eval` applies. This is the weight-space ensemble
    (WiSE-FT) of a fine-tuned model and its zero-shot model; `eval --path` shows the whole path first.

    Example: cftool interpolate zs coop.safetensors --alpha 0.5 -o ensemble.safetensors
    """
    from cftool.eval.compare import ZERO_SHOT
    from cftool.eval.lmc_paths import check_alpha, interpolate
    from cftool.io.outputs import check_outputs
    from cftool.zoo import load_model
    from cftool.zoo.base import resolve_base

    check_alpha(alpha, output)
    inputs = [spec for spec in (start, end) if spec != ZERO_SHOT]
    check_outputs({"-o": output}, [Path(spec) for spec in (*inputs, zs or "") if Path(spec).is_file()], force)
    if zs is None and not inputs:
        raise CftoolError("interpolate zs zs: name a checkpoint for at least one end")
    zoo = load_model(resolve_base(zs, inputs[0] if inputs else None), resolve_device(device))
    written = interpolate(zoo, start, end, alpha, output, overwrite=force)
    console.print(f"wrote {written}: (1 − {alpha:g})·{start} + {alpha:g}·{end}")
    if json_output:
        emit_json({"output": str(written), "start": start, "end": end, "alpha": alpha, "base": zoo.spec.canonical})
