"""Prompts from CoOp's and KgCoOp's own repositories (Dassl `prompt_learner/model.pth.tar-N` files), imported and
continued with `--data` alone on a CoOp dataset in its real layout: the continuation takes the prompt's shape and start
from the file."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import one_line_error
from test_coop_datasets import write_split_file
from test_foreign import save_dassl_checkpoint

from cftool.encode.text import embedded_context
from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.kinds.prompt import COOP_INIT, RANDOM_INIT
from cftool.train.continued import ContinueJob, plan
from cftool.zoo import load_model

PETS = ["abyssinian", "american_bulldog", "basset_hound", "beagle"]  # a class-specific prompt holds one context each


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """coop:OxfordPets (2 training, 1 validation and 1 test image per class) under $CFTOOL_DATA_ROOT."""
    root = tmp_path / "data"
    write_split_file(
        root / "oxford_pets", "OxfordPets", "images", [(f"{name}_{{split}}{{i}}.jpg", name) for name in PETS]
    )
    monkeypatch.setenv("CFTOOL_DATA_ROOT", str(root))
    return root


def _coop_state_dict(ctx: torch.Tensor, **extras: torch.Tensor) -> dict[str, torch.Tensor]:
    """The prompt learner's state dict as CoOp saves it for `tiny`: ctx, and the base's embeddings of the start token
    (token_prefix) and of each class name, end and padding (token_suffix)."""
    tiny = load_model("tiny")
    n_ctx, n_classes = ctx.shape[-2], ctx.shape[0] if ctx.dim() == 3 else len(PETS)
    with torch.no_grad():
        embedded = tiny.model.token_embedding(tiny.tokenizer(["X " * n_ctx + "cat."] * n_classes))
    return {"ctx": ctx, "token_prefix": embedded[:, :1], "token_suffix": embedded[:, 1 + n_ctx :], **extras}


def _words() -> torch.Tensor:
    tiny = load_model("tiny")
    return embedded_context(tiny.model, tiny.tokenizer, COOP_INIT)


# (context, KgCoOp's extras, the start import infers); the random ones are CoOp's N(0, 0.02²).
VARIANTS = {
    "coop-16": (lambda: torch.randn(16, 128) * 0.02, False, RANDOM_INIT),  # CoOp's default N_CTX = 16
    "csc-16": (lambda: torch.randn(len(PETS), 16, 128) * 0.02, False, RANDOM_INIT),  # CoOp's CSC
    "kgcoop-4": (lambda: _words() + 0.01 * torch.randn(4, 128), True, COOP_INIT),  # CTX_INIT "a photo of a", trained
    "coop-4-random": (lambda: torch.randn(4, 128) * 0.02, False, RANDOM_INIT),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_imported_coop_repo_prompt_continues_with_data_alone(cli, tmp_path, data_root, variant):
    make_ctx, kgcoop, start = VARIANTS[variant]
    torch.manual_seed(0)
    ctx = make_ctx()
    extras = {"meta_net.linear1.weight": torch.zeros(8, 128), "bias_vectors": torch.zeros(1, 128)} if kgcoop else {}
    source = save_dassl_checkpoint(tmp_path / "prompt_learner" / "model.pth.tar-50", _coop_state_dict(ctx, **extras))
    imported = tmp_path / "imported.safetensors"
    assert cli("import", source, "--zs", "tiny", "-o", imported).code == 0
    with open_checkpoint(imported, kind="prompt") as ckpt:
        config = ckpt.header.config
    assert (config["n_ctx"], config["class_specific"], config["ctx_init"]) == (ctx.shape[-2], ctx.dim() == 3, start)

    # --data alone: the prompt's own shape and start, MergeTune's continuation recipe, never the CLI's defaults.
    with open_checkpoint(imported) as opened:
        finetune_job, _ = plan(ContinueJob(imported, "tiny", data="coop:OxfordPets"), opened)
    assert finetune_job.method_options == {"n_ctx": ctx.shape[-2], "ctx_init": start, "class_specific": ctx.dim() == 3}
    assert (finetune_job.train.epochs, finetune_job.train.batch_size) == (100, 128)

    output = tmp_path / "continued.safetensors"
    result = cli("continue", imported, "--data", "coop:OxfordPets", "-o", output, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 100  # 100 epochs of one batch
    with open_checkpoint(output, kind="prompt") as continued:
        assert continued["ctx"].shape == ctx.shape and not torch.equal(continued["ctx"], ctx.float())
        assert continued.header.config["class_specific"] == (ctx.dim() == 3)
        assert continued.header.config["ctx_init"] == start


def test_without_data_the_error_names_a_spec_of_the_files_own_base(cli, tmp_path):
    source = save_dassl_checkpoint(tmp_path / "model.pth.tar-50", _coop_state_dict(torch.randn(16, 128) * 0.02))
    imported = tmp_path / "imported.safetensors"
    assert cli("import", source, "--zs", "tiny", "-o", imported).code == 0
    line = one_line_error(cli("continue", imported))
    assert str(imported) in line and "--data toy:flowers" in line

    with open_checkpoint(imported) as ckpt:  # the same prompt, as made for ViT-B/16: real data, not the toy world
        tensors, header = ckpt.load_all(), ckpt.header
    vit = save_checkpoint(tmp_path / "vit.safetensors", tensors, replace(header, base="ViT-B-16:openai"))
    line = one_line_error(cli("continue", vit, "--zs", "tiny"))
    assert "--data coop:" in line and "toy:" not in line
