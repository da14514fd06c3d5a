"""Peak memory and time of `cftool unify` on eleven ViT-B/16-sized deltas: the streaming engine against the same
algorithm on fully loaded tensors, for `--method condu` and `--method ties` (global trim).

The script writes random float32 deltas shaped exactly like open_clip ViT-B-16's state dict (the shapes come from
an open_clip model built on the meta device: nothing is downloaded or allocated), then runs each merge as a
separate process, end to end from the input files to the written output:

  streaming   `cftool unify DELTAS --method M -o OUT`, the command as users run it;
  loaded      every input read whole into memory first, then the same engine and method on whole tensors.

Each process reports its peak RSS as the OS accounts it (``ru_maxrss``: touched memory-mapped pages count) and
the seconds from opening the inputs to the closed output. The report also checks that both runs wrote the same
tensors, and gives the triggers' bytes per parameter of the ConDU set (a 1-bit mask and a 4-byte rescaler).

    .venv/bin/python benchmarks/unify_memory.py                     # 11 × 598 MB deltas, 6.6 GB of disk
    .venv/bin/python benchmarks/unify_memory.py --tasks 3 --shrink 64   # the reduced size CI runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"streaming_peak_rss_gb": 1.5, "time_ratio": 0.7, "trigger_bytes_per_parameter": 0.125}
METHODS = ("condu", "ties")
MODES = ("streaming", "loaded")


def vit_b16_shapes(shrink: int) -> dict[str, tuple[int, ...]]:
    """open_clip ViT-B-16's tensors (all float32), each first dimension divided by ``shrink``."""
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-16", device="meta")
    shapes = {}
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32, name
        shape = tuple(tensor.shape)
        shapes[name] = (max(1, shape[0] // shrink), *shape[1:]) if shape else shape
    return shapes


def write_deltas(folder: Path, shapes: dict[str, tuple[int, ...]], tasks: int, seed: int) -> list[Path]:
    import torch

    from cftool.io.checkpoint import CheckpointWriter, Header

    generator = torch.Generator().manual_seed(seed)
    layout = {name: (torch.float32, shape) for name, shape in shapes.items()}
    paths = []
    for index in range(tasks):
        path = folder / f"task{index:02d}.safetensors"
        header = Header("delta", "ViT-B-16:openai", "0" * 64, task=f"task{index:02d}", classnames=["a", "b"])
        with CheckpointWriter(path, layout, header) as writer:
            for name, shape in shapes.items():
                writer.write(name, torch.randn(shape, generator=generator) * 1e-3)
        paths.append(path)
    return paths


def child(mode: str, method: str, output: Path, inputs: list[Path], threads: int) -> None:
    """One measured run; prints {"seconds", "peak_rss_bytes"} as JSON."""
    import torch

    torch.set_num_threads(threads)
    if mode == "streaming":
        from cftool.cli import main

        began = time.perf_counter()
        code = main(["unify", *map(str, inputs), "--method", method, "-o", str(output)])
        seconds = time.perf_counter() - began
        if code:
            raise SystemExit(code)
    else:
        from cftool.io.checkpoint import open_checkpoint
        from cftool.io.unified import TaskEntry
        from cftool.merge.engine import LoadedDelta, unify
        from cftool.merge.methods import get_method

        merge = get_method(method)
        began = time.perf_counter()
        loaded = []
        for path in inputs:
            with open_checkpoint(path, kind="delta") as reader:
                header = reader.header
                task = TaskEntry(header.task, header.classnames, header.template)
                loaded.append(LoadedDelta(reader.load_all(), task, header.base, header.base_sha256))
        unify(loaded, merge, merge.make_options(), output, chunk_elements=None)
        seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_rss_bytes()}))


def peak_rss_bytes() -> int:
    """This process's peak resident set size as the kernel accounts it: VmHWM, which counts touched pages of memory
    maps too. (``ru_maxrss`` would do, but Linux carries the parent's high-water mark over fork and exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: kilobytes on most systems


def measure(mode: str, method: str, output: Path, inputs: list[Path], threads: int) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--method", method, "--output", str(output)]
    command += ["--threads", str(threads), *map(str, inputs)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - began
    if result.returncode:
        raise SystemExit(f"{mode} {method} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "mode": mode,
        "method": method,
        "seconds": round(report["seconds"], 2),
        "process_seconds": round(wall, 2),
        "peak_rss_gb": round(report["peak_rss_bytes"] / 1e9, 3),
    }


def same_tensors(a: Path, b: Path) -> bool:
    from cftool.io.checkpoint import open_checkpoint, tensors_sha256

    with open_checkpoint(a) as first, open_checkpoint(b) as second:
        return tensors_sha256(first) == tensors_sha256(second)


def trigger_bytes_per_parameter(unified: Path) -> float:
    from cftool.io.unified import RESCALERS, open_unified

    with open_unified(unified) as unified_set:
        parameters = sum(info.numel for info in unified_set.delta.values())
        tasks = len(unified_set.tasks)
        trigger_bytes = sum(
            info.nbytes for name, info in unified_set.reader.tensors.items() if name not in unified_set.delta
        )
        assert unified_set.reader.tensors[RESCALERS].nbytes == 4 * tasks
    return trigger_bytes / tasks / parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=11)
    parser.add_argument("--shrink", type=int, default=1, help="divide every tensor's first dimension by this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the deltas go (default: a temp folder)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.method, args.output, args.inputs, args.threads)
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        folder = Path(scratch)
        shapes = vit_b16_shapes(args.shrink)
        inputs = write_deltas(folder, shapes, args.tasks, args.seed)
        runs = []
        for method in METHODS:
            outputs = {mode: folder / f"{method}-{mode}.st" for mode in MODES}
            pair = [measure(mode, method, outputs[mode], inputs, args.threads) for mode in MODES]
            streaming, loaded = pair
            runs += pair
            streaming["same_output_as_loaded"] = same_tensors(outputs["streaming"], outputs["loaded"])
            streaming["time_ratio"] = round(streaming["seconds"] / loaded["seconds"], 3)
            if method == "condu":
                bytes_per_parameter = trigger_bytes_per_parameter(outputs["streaming"])
            for path in outputs.values():
                path.unlink()
    parameters = sum(math.prod(shape) for shape in shapes.values())
    streaming_runs = [run for run in runs if run["mode"] == "streaming"]
    report = {
        "tasks": args.tasks,
        "shrink": args.shrink,
        "parameters_per_delta": parameters,
        "delta_gb": round(parameters * 4 / 1e9, 3),
        "threads": args.threads,
        "runs": runs,
        "trigger_bytes_per_parameter": round(bytes_per_parameter, 6),
        "targets": TARGETS,
        "targets_met": {
            "streaming_peak_rss_gb": all(r["peak_rss_gb"] <= TARGETS["streaming_peak_rss_gb"] for r in streaming_runs),
            "time_ratio": all(r["time_ratio"] <= TARGETS["time_ratio"] for r in streaming_runs),
            "trigger_bytes_per_parameter": round(bytes_per_parameter, 3) <= TARGETS["trigger_bytes_per_parameter"],
        },
    }
    for run in runs:
        line = f"{run['method']:6} {run['mode']:9} {run['seconds']:8.1f} s  peak RSS {run['peak_rss_gb']:.2f} GB"
        if "time_ratio" in run:
            line += f"  time ratio {run['time_ratio']:.2f}  same output: {run['same_output_as_loaded']}"
        print(line, file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
