"""ConDU with LoRA as the reference does it (github.com/zhangzicong518/ConDU): LoRA on the MLP only, both factors
randn·0.01, scale 1/√rank (clip/model_lora.py), unified and decoupled on the factors (src/main.py,
src/delta_models.py), and its session folders imported.

The reference computations below are written out from the official code's logic, on the reference's layout
(lora_A [in, rank], lora_B [rank, out], x @ A @ B), and compared with cftool's (A [rank, in], B [out, rank]).
"""

import math

import torch

from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.io.unified import open_unified
from cftool.kinds.apply import build_method
from cftool.merge.decouple import expert_factors
from cftool.zoo import load_model
from cftool.zoo.base_weights import open_base

RANK = 4
TARGETS = [f"transformer.resblocks.{i}.mlp.{layer}.weight" for i in (0, 1) for layer in ("c_fc", "c_proj")]


def reference_unify(deltas: list[dict[str, torch.Tensor]]):
    """ConDU src/delta_models.py:86-126, written out: sign of the mean (0 counts as -1), masks, the largest agreeing
    magnitude, and rescalers = Σ mean|δ| / Σ mean|mask·u| over tensors."""
    n = len(deltas)
    unified, masks, scales, new_scales = (
        {},
        {},
        torch.zeros(n, dtype=torch.float64),
        torch.zeros(n, dtype=torch.float64),
    )
    for name in deltas[0]:
        flag = (torch.stack([d[name] for d in deltas]).mean(0) > 0).float() * 2 - 1
        masks[name] = [(d[name] * flag) > 0 for d in deltas]
        largest = torch.zeros_like(deltas[0][name])
        for m, d in enumerate(deltas):
            largest = torch.maximum(largest, (masks[name][m] * d[name]).abs())
            scales[m] += d[name].abs().double().mean()
        unified[name] = largest * flag
    for m in range(n):
        for name in unified:
            new_scales[m] += (unified[name] * masks[name][m]).abs().double().mean()
    return unified, masks, scales / new_scales


def _reference_factors(generator, shapes):
    """Reference-layout factors (A [in, rank], B [rank, out]) of every target."""
    factors = {}
    for target in TARGETS:
        out_features, in_features = shapes[target]
        module = target.removesuffix(".weight")
        factors[f"{module}.lora_A"] = torch.randn(in_features, RANK, generator=generator) * 0.05
        factors[f"{module}.lora_B"] = torch.randn(RANK, out_features, generator=generator) * 0.05
    return factors


def _ours(name: str) -> str:
    """The reference's factor name -> cftool's (``...c_fc.lora_A`` -> ``...c_fc.weight.lora_A``)."""
    module, _, factor = name.rpartition(".")
    return f"{module}.weight.{factor}"


def _write_lora(path, base, task, reference_factors):
    tensors = {_ours(name): t.T.contiguous() for name, t in reference_factors.items()}
    tensors = {f"{target}.{f}": tensors[f"{target}.{f}"] for target in TARGETS for f in ("lora_A", "lora_B")}
    config = {"rank": RANK, "alpha": math.sqrt(RANK), "targets": TARGETS}
    save_checkpoint(path, tensors, base.header("lora", task=task, method="lora", config=config))


def _shapes(base):
    return {target: tuple(base.layout[target][1]) for target in TARGETS}


def test_factor_space_unify_and_decouple_equal_the_reference(cli, tmp_path):
    generator = torch.Generator().manual_seed(0)
    tasks = ["food", "mnist", "cars"]
    with open_base("tiny") as base:
        shapes = _shapes(base)
        trained = {task: _reference_factors(generator, shapes) for task in tasks}
        for task in tasks:
            _write_lora(tmp_path / f"{task}.safetensors", base, task, trained[task])
        weights = {target: base[target] for target in TARGETS}
    files = [tmp_path / f"{task}.safetensors" for task in tasks]
    assert cli("unify", "--method", "condu-lora", *files, "-o", tmp_path / "u.st").code == 0

    # cftool's factor deltas are the factors themselves (relative to zero: the zero-shot model is W itself).
    unified, masks, rescalers = reference_unify([trained[task] for task in tasks])
    with open_unified(tmp_path / "u.st") as ours:
        assert torch.allclose(ours.rescalers.double(), rescalers, atol=1e-6)
        for index in range(len(tasks)):
            factors = expert_factors(ours, index)
            for name in unified:
                expected = (unified[name] * masks[name][index] * rescalers[index]).T  # λ on A and B alike
                assert torch.allclose(factors[_ours(name)], expected.float(), atol=1e-6)

    # The expert applied to the base: the reference's forward x·W^T + s·x·A·B, i.e. W + s·(A·B)^T, s = 1/√rank.
    assert cli("decouple", tmp_path / "u.st", "--task", "mnist", "--as", "model", "-o", tmp_path / "m.st").code == 0
    assert cli("decouple", tmp_path / "u.st", "--task", "mnist", "-o", tmp_path / "m-lora.st").code == 0
    with open_checkpoint(tmp_path / "m.st") as model, open_checkpoint(tmp_path / "m-lora.st") as lora:
        assert lora.header.kind == "lora" and lora.header.config["rank"] == RANK
        for target in TARGETS:
            module = target.removesuffix(".weight")
            a = unified[f"{module}.lora_A"] * masks[f"{module}.lora_A"][1] * rescalers[1]
            b = unified[f"{module}.lora_B"] * masks[f"{module}.lora_B"][1] * rescalers[1]
            expected = weights[target].double() + (a @ b).T / math.sqrt(RANK)
            assert torch.allclose(model[target].double(), expected, atol=1e-6)


def test_lora_targets_init_and_scale_are_the_references():
    zoo = load_model("tiny", device="cpu")
    shapes = {name: tuple(p.shape) for name, p in zoo.model.named_parameters()}  # before LoRA parametrises them
    torch.manual_seed(7)
    method = build_method(
        "lora", zoo, ["a", "b"], ["a photo of a {}."], rank=RANK, alpha=2.0, lora_targets="mlp", lora_init="condu"
    )
    # Every block's c_fc and c_proj in both of tiny's transformers, the image tower's first (model_lora.py:187-189).
    assert method.targets == [
        f"{tower}transformer.resblocks.{i}.mlp.{layer}.weight"
        for tower in ("visual.", "")
        for i in range(4)
        for layer in ("c_fc", "c_proj")
    ]
    assert method.towers == ("image", "text") and not method.image_tower_frozen
    torch.manual_seed(7)
    for target in method.targets:  # model_lora.py:15-17, in the order the factors are made
        out_features, in_features = shapes[target]
        a, b = torch.randn(in_features, RANK) * 0.01, torch.randn(RANK, out_features) * 0.01
        factors = method.factors[target]
        assert torch.equal(factors.lora_A.detach(), a.T) and torch.equal(factors.lora_B.detach(), b.T)
        assert factors.scale == 1 / math.sqrt(RANK)
    assert method.options()["lora_targets"] == "mlp" and method.options()["lora_init"] == "condu"


def test_an_official_condu_lora_session_folder_imports(cli, tmp_path):
    """The layout ConDU's main.py leaves: {save}/pretrained.pth (a pickled model; here its state dict, as --lora-base
    takes it) and {save}/session_N/ with unified.pth (every tensor of the LoRA model), {task}.pth per task with masks
    and rescalers, and prototypes.pth."""
    generator = torch.Generator().manual_seed(1)
    with open_base("tiny") as base:
        shapes = _shapes(base)
        weights = {target: base[target] for target in TARGETS}
        frozen = base["ln_final.weight"]
    pretrained = _reference_factors(generator, shapes)
    tasks = ["Food", "MNIST"]
    deltas = [{name: t - pretrained[name] for name, t in _reference_factors(generator, shapes).items()} for _ in tasks]
    unified, masks, rescalers = reference_unify(deltas)
    session = tmp_path / "full_lora" / "session_1"
    session.mkdir(parents=True)
    # A frozen weight is in the reference's state dict too, with a zero delta and empty masks.
    torch.save({**unified, "ln_final.weight": torch.zeros_like(frozen)}, session / "unified.pth")
    for index, task in enumerate(tasks):
        task_masks = {name: m[index] for name, m in masks.items()}
        task_masks["ln_final.weight"] = torch.zeros_like(frozen, dtype=torch.bool)
        torch.save({"masks": task_masks, "rescalers": rescalers[index].float()}, session / f"{task}.pth")
    torch.save(
        {task: [torch.randn(128, generator=generator) for _ in range(3)] for task in tasks}, session / "prototypes.pth"
    )
    state = tmp_path / "pretrained-state.pth"
    torch.save({**pretrained, "ln_final.weight": frozen}, state)

    out = tmp_path / "imported.st"
    refused = cli("import", session, "--zs", "tiny", "-o", out)
    assert refused.code != 0 and "--lora-base" in refused.stderr
    assert cli("import", session, "--zs", "tiny", "--lora-base", state, "-o", out).code == 0
    assert cli("decouple", out, "--task", "MNIST", "--as", "model", "-o", tmp_path / "mnist.st").code == 0
    with open_checkpoint(tmp_path / "mnist.st") as model:
        for target in TARGETS:  # main.py:72-74: pretrained + unified·mask·rescaler, then the LoRA forward
            module = target.removesuffix(".weight")
            a, b = (
                pretrained[f"{module}.{f}"] + unified[f"{module}.{f}"] * masks[f"{module}.{f}"][1] * rescalers[1]
                for f in ("lora_A", "lora_B")
            )
            expected = weights[target].double() + (a.double() @ b.double()).T / math.sqrt(RANK)
            assert torch.allclose(model[target].double(), expected, atol=1e-6)
        assert torch.equal(model["ln_final.weight"], frozen)


def test_finetune_unify_decouple_and_eval_end_to_end(cli, tmp_path):
    lora = ["--method", "lora", "--lora-targets", "mlp", "--lora-init", "condu", "--rank", "4", "--alpha", "2"]
    train = ["--zs", "tiny", "--shots", "2", "--iterations", "2", "--batch-size", "8", "--device", "cpu", *lora]
    for task in ("food", "mnist"):
        assert cli("finetune", *train, "--data", f"toy:{task}", "-o", tmp_path / f"{task}.safetensors").code == 0
    with open_checkpoint(tmp_path / "food.safetensors") as ckpt:
        assert ckpt.header.config["lora_targets"] == "mlp" and ckpt.header.config["lora_init"] == "condu"
    files = [tmp_path / "food.safetensors", tmp_path / "mnist.safetensors"]
    assert cli("unify", "--method", "condu-lora", *files, "-o", tmp_path / "u.st").code == 0
    assert cli("decouple", tmp_path / "u.st", "--task", "food", "-o", tmp_path / "food-expert.st").code == 0
    result = cli("eval", "--zs", "tiny", "--data", "toy:food", tmp_path / "food-expert.st", "--json")
    assert result.code == 0 and '"accuracy"' in result.stdout
    # Weight deltas are refused by condu-lora, and lora factors by condu: the two spaces do not mix.
    assert cli("unify", "--method", "condu", *files, "-o", tmp_path / "x.st").code != 0
