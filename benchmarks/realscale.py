"""cftool at real scale against plain open_clip loops doing the same work: peak RSS and time per image of every command
a researcher runs, on a random-weight ViT-B-16 and small image folders in the layout `folder:` reads.

The script writes a random ViT-B-16 (open_clip's own initialisation, seeded; nothing is downloaded) as a plain
open_clip state dict used as ``--zs ViT-B-16:PATH``, and two toy tasks as image folders (``folder:PATH``, real PNG
files), then runs in turn, each in a process of its own timed from its first file read to its last file written:

  eval                 `cftool eval` of the base on task A's test split
  finetune coop|full   on task A, `finetune lora` on task B (two tasks, so that there is something to unify)
  continue coop|lora|full   MergeTune on each of those (the recorded recipe; --iterations/--batch-size as given)
  delta                `cftool delta` of the full model of A (and of B's LoRA, which `unify` needs)
  unify                `cftool unify` (ConDU) of the two deltas
  route                `cftool route` of A's test split over the unified set and both tasks' prototypes
  eval --benchmark mtil  with --mtil-root: the eleven MTIL datasets (cftool alone; its zero-shot heads encode every
                       class × template prompt, 3,434 for Caltech101)

and each against a plain open_clip loop (written out below) that does the same work: the same model, images, batches,
optimiser steps, path samples, tensors read and written. The figure is the ratio plain time / cftool time (1 = as fast
as the plain loop); each process's peak RSS (VmHWM: touched pages of memory maps count) is given for both.

    .venv/bin/python benchmarks/realscale.py                      # ViT-B-16 on CPU (minutes)
    .venv/bin/python benchmarks/realscale.py --device cuda        # on a GPU (bf16 autocast, as cftool's auto)
    .venv/bin/python benchmarks/realscale.py --shrink --threads 1 # the tiny architecture, as CI runs it
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

ARCH = "ViT-B-16"
SHRUNK_ARCH = "cftool-tiny"  # cftool's embedded architecture (64-pixel images, width 128), random weights here
TASKS = {"A": "food", "B": "mnist"}  # toy tasks written as image folders
TEMPLATE = "a photo of a {}."  # what `folder:` data is scored with
LMC_SAMPLES = (0.1, 0.3, 0.5, 0.7, 0.9)  # cftool's default path samples (MergeTune's reference)
LORA_RANK, LORA_ALPHA = 8, 16.0
LORA_TARGETS = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LEARNING_RATES = {"coop": 2e-3, "lora": 1e-3, "full": 1e-5}


# ---------------------------------------------------------------------------------------------------- the world


def write_base(path: Path, arch: str, seed: int) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    import cftool.zoo.models  # noqa: F401  registers cftool's model configs (SHRUNK_ARCH) with open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, load_weights=False)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, path)


def write_folders(root: Path, train: int, test: int) -> dict[str, Path]:
    from cftool.data.toy import write_toy_folder

    return {key: write_toy_folder(name, root / name, {"train": train, "test": test}) for key, name in TASKS.items()}


# ---------------------------------------------------------------------------------------------------- plain open_clip


class Plain:
    """open_clip's model with the base weights, its eval preprocessing and tokenizer, and the images of a folder."""

    def __init__(self, arch: str, weights: Path, device: str):
        import open_clip
        import torch
        from safetensors.torch import load_file

        if arch == SHRUNK_ARCH:
            import cftool.zoo.models  # noqa: F401  registers the config (nothing else of cftool runs)
        self.torch, self.device = torch, device
        self.model = open_clip.create_model(arch, pretrained=None, load_weights=False)
        self.model.load_state_dict(load_file(weights))
        self.model.to(device).eval()
        self.preprocess = open_clip.image_transform(self.model.visual.image_size, is_train=False)
        self.tokenizer = open_clip.get_tokenizer(arch)

    def autocast(self):
        return self.torch.autocast("cuda", self.torch.bfloat16, enabled=self.device.startswith("cuda"))

    def split(self, folder: Path, split: str) -> tuple[list[str], object, object]:
        """Class names, preprocessed images [N, 3, H, W] and labels of ``folder/split``."""
        from PIL import Image

        classes = sorted(p.name for p in (folder / split).iterdir() if p.is_dir())
        files = [(f, label) for label, name in enumerate(classes) for f in sorted((folder / split / name).iterdir())]
        images = self.torch.stack([self.preprocess(Image.open(f).convert("RGB")) for f, _ in files])
        return classes, images, self.torch.tensor([label for _, label in files])

    def tokens(self, classes: list[str]):
        return self.tokenizer([TEMPLATE.format(name) for name in classes]).to(self.device)

    def image_features(self, images, batch_size: int = 256, weights=None):
        torch = self.torch
        with torch.no_grad(), self.autocast():
            return torch.cat(
                [
                    self.encode(images[i : i + batch_size].to(self.device), None, weights)[0].float()
                    for i in range(0, len(images), batch_size)
                ]
            )

    def encode(self, images, tokens, weights=None):
        """Normalised image and text features, with ``weights`` in place of the model's own where given."""
        from torch.func import functional_call

        out = functional_call(self.model, weights or {}, (images, tokens), strict=False)
        return out[0], out[1]


def batches(n: int, batch_size: int, iterations: int, seed: int):
    """Indices of each step's batch: reshuffled passes over ``n`` images, as a sampler without drop-last draws."""
    import torch

    generator, order = torch.Generator().manual_seed(seed), []
    for _ in range(iterations):
        while len(order) < batch_size:
            order += torch.randperm(n, generator=generator).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def plain_eval(job: dict) -> None:
    plain = Plain(job["arch"], Path(job["base"]), job["device"])
    classes, images, labels = plain.split(Path(job["data"]), "test")
    with plain.torch.no_grad():
        head = plain.encode(None, plain.tokens(classes))[1].float()
    predictions = (plain.image_features(images) @ head.T).argmax(-1).cpu()
    print((predictions == labels).float().mean().item(), file=sys.stderr)


class PlainCoOp:
    """A learned context in place of the template's words ("a photo of a"), the rest of the prompt from the class
    name."""

    def __init__(self, plain: Plain, classes: list[str]):
        torch, model = plain.torch, plain.model
        self.plain, self.n_ctx = plain, 4
        self.tokens = plain.tokens(classes)
        with torch.no_grad():
            self.embedded = model.token_embedding(self.tokens)
        self.ctx = torch.nn.Parameter(self.embedded[0, 1 : 1 + self.n_ctx].clone())
        self.zero_shot_ctx = self.ctx.detach().clone()

    def text_features(self, ctx):
        torch, model = self.plain.torch, self.plain.model
        x = torch.cat(
            [self.embedded[:, :1], ctx.expand(len(self.tokens), -1, -1), self.embedded[:, 1 + self.n_ctx :]], 1
        )
        x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(len(x)), self.tokens.argmax(-1)] @ model.text_projection
        return torch.nn.functional.normalize(x, dim=-1)


def _prototypes(plain: Plain, features, labels, n_classes: int):
    torch = plain.torch
    means = torch.stack([features[labels == c].mean(0) for c in range(n_classes)])
    return torch.nn.functional.normalize(means, dim=-1)


def plain_train(job: dict) -> None:
    """`finetune` (continued: MergeTune's loss) of a prompt, LoRA factors or every weight, then its prototypes."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.manual_seed(job["seed"])
    plain = Plain(job["arch"], Path(job["base"]), job["device"])
    model, method, continued = plain.model, job["method"], job.get("continued") is not None
    classes, images, labels = plain.split(Path(job["data"]), "train")
    features = plain.image_features(images)  # the prototypes' features (and coop's cached training features)
    logit_scale = model.logit_scale.exp().detach()
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    if method == "coop":
        coop = PlainCoOp(plain, classes)
        start = load_file(job["continued"])["ctx"].to(plain.device) if continued else None
        if start is not None:
            coop.ctx.data.copy_(start)
        trainable = [coop.ctx]

        def loss_of(index):
            feats, y = features[index], labels[index].to(plain.device)
            text = coop.text_features(coop.ctx)
            loss = torch.nn.functional.cross_entropy(logit_scale * feats @ text.T, y)
            if continued:  # the path over class text features to the fine-tuned prompt, and the distance to zero-shot
                with torch.no_grad():
                    fine_tuned = coop.text_features(start)
                path = [(1 - a) * fine_tuned + a * text for a in LMC_SAMPLES]
                loss = loss + sum(
                    torch.nn.functional.cross_entropy(
                        logit_scale * feats @ torch.nn.functional.normalize(t, dim=-1).T, y
                    )
                    for t in path
                ) / len(path)
                loss = loss + (coop.ctx - coop.zero_shot_ctx).pow(2).sum()
            return loss
    else:
        tokens = plain.tokens(classes)
        if method == "lora":
            targets = [n for n in base if n.endswith(LORA_TARGETS)]
            scale = LORA_ALPHA / LORA_RANK
            factors = {
                n: (
                    torch.nn.Parameter(torch.zeros(base[n].shape[0], LORA_RANK, device=plain.device)),
                    torch.nn.Parameter(torch.randn(LORA_RANK, base[n].shape[1], device=plain.device) / LORA_RANK),
                )
                for n in targets
            }
            if continued:
                saved = load_file(job["continued"])
                for n, (b, a) in factors.items():
                    b.data.copy_(saved[f"{n}.lora_B"]), a.data.copy_(saved[f"{n}.lora_A"])
            trainable = [t for pair in factors.values() for t in pair]

            def weights():
                return {n: base[n] + scale * b @ a for n, (b, a) in factors.items()}
        else:
            if continued:
                model.load_state_dict(load_file(job["continued"]))
            trainable = list(model.parameters())

            def weights():
                return dict(model.named_parameters())

        start = {n: w.detach().clone() for n, w in weights().items()} if continued else None

        def loss_of(index):
            x, y = images[index].to(plain.device), labels[index].to(plain.device)
            w = weights()

            def ce(solution):
                image_features, text_features = plain.encode(x, tokens, solution)
                return torch.nn.functional.cross_entropy(logit_scale * image_features @ text_features.T, y)

            loss = ce(w)
            if continued:  # the path in parameter space to the fine-tuned weights, and the distance to the base
                loss = loss + sum(ce({n: (1 - a) * start[n] + a * w[n] for n in w}) for a in LMC_SAMPLES) / len(
                    LMC_SAMPLES
                )
                loss = loss + sum((w[n] - base[n]).pow(2).sum() for n in w)
            return loss

    if method == "coop":
        optimiser = torch.optim.SGD(trainable, lr=LEARNING_RATES[method], momentum=0.9)
    else:
        optimiser = torch.optim.AdamW(trainable, lr=LEARNING_RATES[method])
    for index in batches(len(labels), job["batch_size"], job["iterations"], job["seed"]):
        with plain.autocast():
            loss = loss_of(index)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    if method == "coop":
        trained = {"ctx": coop.ctx.detach().cpu()}
    elif method == "lora":
        trained = {
            f"{n}.lora_{k}": t.detach().cpu().contiguous()
            for n, (b, a) in factors.items()
            for k, t in (("B", b), ("A", a))
        }
    else:
        trained = {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
    save_file(trained, job["output"])
    prototypes = _prototypes(plain, features.cpu(), labels, len(classes))
    save_file({"prototypes": prototypes.contiguous()}, job["output"] + ".prototypes")


def plain_delta(job: dict) -> None:
    from safetensors.torch import load_file, save_file

    base, tuned = load_file(job["base"]), load_file(job["model"])
    save_file({n: (tuned[n].float() - t.float()).contiguous() for n, t in base.items()}, job["output"])


def plain_unify(job: dict) -> None:
    """ConDU's unify: elected sign, the largest agreeing magnitude, a bit-packed mask and a rescaler per task."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    deltas = [load_file(path) for path in job["deltas"]]
    unified, masks = {}, {}
    kept, total = torch.zeros(len(deltas), dtype=torch.float64), torch.zeros(len(deltas), dtype=torch.float64)
    for name in deltas[0]:
        stacked = torch.stack([d[name].float() for d in deltas])
        sign = torch.sign(stacked.sum(0))
        u = sign * (stacked * (torch.sign(stacked) == sign)).abs().amax(0)
        unified[name] = u
        for i, delta in enumerate(stacked):
            mask = delta * u > 0
            masks[f"{name}.mask{i}"] = torch.from_numpy(np.packbits(mask.flatten().numpy()))
            total[i] += delta.abs().sum()
            kept[i] += (mask * u).abs().sum()
    save_file({**unified, **masks, "rescalers": (total / kept).float()}, job["output"])


def plain_route(job: dict) -> None:
    """Each image to its top-K tasks by prototype similarity; each expert (θ0 + λ M⊙u) run on its images only, its
    probabilities averaged with the zero-shot model's."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    plain = Plain(job["arch"], Path(job["base"]), job["device"])
    classes, images, _ = plain.split(Path(job["data"]), "test")
    tokens = plain.tokens(classes)
    zero_shot = plain.image_features(images)
    with torch.no_grad():
        head = plain.encode(None, tokens)[1].float()
    prototypes = [load_file(path)["prototypes"].to(plain.device) for path in job["prototypes"]]
    similarity = torch.stack([(zero_shot @ p.T).amax(-1) for p in prototypes], 1)
    top = similarity.topk(min(job["top_k"], len(prototypes)), dim=1).indices
    probabilities = (zero_shot @ head.T * 100).softmax(-1)
    unified = load_file(job["unified"])
    base = {n: p.detach() for n, p in plain.model.named_parameters()}
    for task in range(len(prototypes)):
        chosen = (top == task).any(1).nonzero().flatten().cpu()
        if not len(chosen):
            continue
        expert = {}
        for name, tensor in base.items():
            packed = unified[f"{name}.mask{task}"].numpy()
            mask = torch.from_numpy(np.unpackbits(packed)[: tensor.numel()].astype(bool)).reshape(tensor.shape)
            expert[name] = tensor + unified["rescalers"][task] * mask.to(tensor.device) * unified[name].to(
                tensor.device
            )
        with torch.no_grad(), plain.autocast():
            expert_head = plain.encode(None, tokens, expert)[1].float()
        features = plain.image_features(images[chosen], weights=expert)
        probabilities[chosen] += (features @ expert_head.T * 100).softmax(-1)
    print(probabilities.argmax(-1).tolist(), file=sys.stderr)


PLAIN = {"eval": plain_eval, "train": plain_train, "delta": plain_delta, "unify": plain_unify, "route": plain_route}


# ---------------------------------------------------------------------------------------------------- measuring


class Died(Exception):
    """A measured process was killed (by the kernel's OOM killer, most often): a row of the report, not its end."""


def forked(threads: int, function, *args):
    """``function(*args)`` in a forked process, its output kept out of the report (shown where it fails).

    The parent has imported torch, open_clip and cftool and run nothing: each process starts as a fresh one would
    after those imports (which both sides need), without paying for them once per measurement."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    with tempfile.TemporaryFile() as log:
        process = context.Process(target=_in_child, args=(send, log.fileno(), threads, function, args))
        process.start()
        send.close()
        try:
            result = receive.recv()
        except EOFError:
            process.join()
            raise Died(f"killed by signal {-process.exitcode}" if process.exitcode < 0 else "died") from None
        process.join()
        if "error" in result:
            log.seek(0)
            raise SystemExit(f"{function.__name__}{args} failed: {result['error']}\n{log.read()[-3000:].decode()}")
    return result["value"]


def _in_child(send, log: int, threads: int, function, args) -> None:
    import torch

    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(threads)
    try:
        send.send({"value": function(*args)})
    except BaseException:  # reported by the parent, with the output
        send.send({"error": traceback.format_exc()})


def timed(kind: str, payload) -> dict:
    """One measured run: seconds from its first file read to its last file written, and peak RSS."""
    import torch

    from cftool.cli import main

    began = time.perf_counter()
    if kind == "cftool":
        code = main(payload)
        if code:
            raise RuntimeError(f"cftool exited with {code}")
    else:
        PLAIN[payload["plain"]](payload)
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - began, "peak_rss_gb": peak_rss_bytes() / 1e9}


def peak_rss_bytes() -> int:
    """VmHWM, which counts touched pages of memory maps (``ru_maxrss`` of a forked child starts at its parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: kilobytes on most systems


def run(args: argparse.Namespace, work: Path) -> list[dict]:
    arch = SHRUNK_ARCH if args.shrink else ARCH
    base = work / "base.safetensors"
    forked(args.threads, write_base, base, arch, args.seed)
    data = forked(args.threads, write_folders, work / "data", args.train_per_class, args.test_per_class)
    zs, device = f"{arch}:{base}", ["--device", args.device]
    steps = ["--iterations", str(args.iterations), "--batch-size", str(args.batch_size)]
    common = {
        "arch": arch,
        "base": str(base),
        "device": args.device,
        "seed": args.seed,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
    }
    trained_images = args.iterations * args.batch_size
    test_images = {key: sum(1 for _ in (folder / "test").rglob("*.png")) for key, folder in data.items()}
    runs, out = [], work / "runs"
    out.mkdir()

    def compare(name: str, cftool_args: list, plain_job: dict | None, images: int | None) -> None:
        row = {"command": name, "images": images}
        sides = {"cftool": ("cftool", list(map(str, cftool_args)))}
        if plain_job is not None:
            sides["plain"] = ("plain", {**common, **plain_job})
        for side, (kind, payload) in sides.items():
            try:
                row[side] = forked(args.threads, timed, kind, payload)
            except Died as death:
                row[side] = {"died": str(death)}
        if all("seconds" in row.get(side, {}) for side in ("cftool", "plain")):
            row["time_ratio"] = row["plain"]["seconds"] / row["cftool"]["seconds"]
        runs.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)  # each row as it is measured: a long run shows progress

    compare(
        "eval",
        ["eval", "--zs", zs, "--data", f"folder:{data['A']}", *device],
        {"plain": "eval", "data": str(data["A"])},
        test_images["A"],
    )
    trained = {
        "coop": ("A", out / "coop.safetensors"),
        "lora": ("B", out / "lora.safetensors"),
        "full": ("A", out / "full.safetensors"),
    }
    for method, (task, path) in trained.items():
        compare(
            f"finetune --method {method}",
            [
                "finetune",
                "--zs",
                zs,
                "--data",
                f"folder:{data[task]}",
                "--method",
                method,
                *steps,
                *device,
                "--seed",
                args.seed,
                "-o",
                path,
            ],
            {"plain": "train", "method": method, "data": str(data[task]), "output": str(work / f"plain-{method}")},
            trained_images,
        )
    for method, (task, path) in trained.items():
        recipe = ["--inherit-recipe"] if method == "coop" else []  # not MergeTune's 100-epoch CoOp recipe
        compare(
            f"continue ({method})",
            ["continue", path, "--zs", zs, *recipe, *steps, *device, "-o", out / f"continued-{method}.safetensors"],
            {
                "plain": "train",
                "method": method,
                "data": str(data[task]),
                "continued": str(work / f"plain-{method}"),
                "output": str(work / f"plain-continued-{method}"),
            },
            trained_images,
        )
    deltas = out / "deltas"
    deltas.mkdir()
    compare(
        "delta",
        ["delta", trained["full"][1], "--zs", zs, "-o", deltas / "A.safetensors"],
        {"plain": "delta", "model": str(work / "plain-full"), "output": str(work / "plain-delta-A")},
        None,
    )
    compare("delta (lora)", ["delta", trained["lora"][1], "--zs", zs, "-o", deltas / "B.safetensors"], None, None)
    plain_lora_delta = work / "plain-delta-B"  # the plain side's LoRA as a delta, merged here unmeasured
    forked(args.threads, merge_lora, work / "plain-lora", base, plain_lora_delta)
    compare(
        "unify",
        ["unify", deltas / "A.safetensors", deltas / "B.safetensors", "-o", out / "unified.safetensors"],
        {
            "plain": "unify",
            "deltas": [str(work / "plain-delta-A"), str(plain_lora_delta)],
            "output": str(work / "plain-unified"),
        },
        None,
    )
    compare(
        "route",
        [
            "route",
            out / "unified.safetensors",
            "--zs",
            zs,
            "--prototypes",
            out / "full.prototypes.safetensors",
            "--prototypes",
            out / "lora.prototypes.safetensors",
            "--data",
            f"folder:{data['A']}",
            *device,
        ],
        {
            "plain": "route",
            "data": str(data["A"]),
            "unified": str(work / "plain-unified"),
            "top_k": 4,
            "prototypes": [str(work / "plain-full.prototypes"), str(work / "plain-lora.prototypes")],
        },
        test_images["A"],
    )
    if args.mtil_root is not None:  # cftool alone: its heads of every class × template prompt are what is measured
        compare(
            "eval --benchmark mtil",
            ["eval", "--zs", zs, "--benchmark", "mtil", "--data-root", args.mtil_root, *device],
            None,
            None,
        )
    return runs


def merge_lora(factors_file: Path, base_file: Path, output: Path) -> None:
    from safetensors.torch import load_file, save_file

    factors, base = load_file(factors_file), load_file(base_file)
    delta = {
        n: (LORA_ALPHA / LORA_RANK) * factors[f"{n}.lora_B"] @ factors[f"{n}.lora_A"]
        if f"{n}.lora_B" in factors
        else t.new_zeros(t.shape)
        for n, t in base.items()
    }
    save_file(delta, output)


def table(report: dict) -> str:
    lines = [
        f"{report['arch']} on {report['device']} ({report['threads']} threads), {report['iterations']} steps of "
        f"{report['batch_size']} images",
        "| command | cftool s | plain s | ratio (plain/cftool time) | cftool ms/image | plain ms/image "
        "| cftool peak RSS GB | plain peak RSS GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["runs"]:
        ours, plain = row["cftool"], row.get("plain")
        if "died" in ours or (plain and "died" in plain):
            died = [f"{side} {row[side]['died']}" for side in ("cftool", "plain") if "died" in row.get(side, {})]
            lines.append(f"| {row['command']} | " + "; ".join(died) + " | | | | | | |")
            continue
        cells = [
            row["command"],
            f"{ours['seconds']:.2f}",
            f"{plain['seconds']:.2f}" if plain else "–",
            f"{row['time_ratio']:.2f}" if plain else "–",
            _per_image(ours, row["images"]),
            _per_image(plain, row["images"]) if plain else "–",
            f"{ours['peak_rss_gb']:.2f}",
            f"{plain['peak_rss_gb']:.2f}" if plain else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _per_image(side: dict, images: int | None) -> str:
    return f"{1000 * side['seconds'] / images:.0f}" if images else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shrink", action="store_true", help=f"the {SHRUNK_ARCH} architecture instead of {ARCH}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on both sides)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=2, help="training images per class of each task")
    parser.add_argument("--test-per-class", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mtil-root", type=Path, help="also `eval --benchmark mtil` over MTIL's datasets under ROOT")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    parser.add_argument("--workdir", type=Path, help="where the files go (default: a temporary folder)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import open_clip  # noqa: F401  imported once, before the processes fork (see ``forked``)
    import torch  # noqa: F401

    import cftool.cli  # noqa: F401
    import cftool.zoo.models  # noqa: F401

    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        runs = run(args, Path(scratch))
    report = {
        "arch": SHRUNK_ARCH if args.shrink else ARCH,
        "device": args.device,
        "threads": args.threads,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "runs": runs,
        "min_time_ratio": min(math.inf, *(r["time_ratio"] for r in runs if "time_ratio" in r)),
    }
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
