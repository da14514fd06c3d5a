import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_about
from safetensors.torch import save_file
from torch.optim.lr_scheduler import CosineAnnealingLR, _LRScheduler

from cftool.errors import CftoolError
from cftool.io.foreign import PickledTrainingState, load_weights_only, read_coop_prompt, read_state_dict


class RunsShellCommand:
    """What a malicious checkpoint holds: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ConstantWarmupScheduler(_LRScheduler):
    """Dassl's warm-up wrapper: its state_dict() pickles the successor scheduler as an object."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        return [self.cons_lr for _ in self.base_lrs]


def save_dassl_checkpoint(path: Path, state_dict: dict, epoch: int = 50) -> Path:
    """A prompt_learner/model.pth.tar-N as Dassl's save_model writes it, optimizer and scheduler included."""
    ctx = torch.nn.Parameter(state_dict["ctx"].clone())
    optimizer = torch.optim.SGD([ctx], lr=0.002, momentum=0.9)
    scheduler = ConstantWarmupScheduler(optimizer, CosineAnnealingLR(optimizer, epoch), 1, 1e-5)
    ctx.sum().backward()
    optimizer.step()  # fills the optimizer state (a defaultdict) with momentum buffers
    scheduler.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": OrderedDict(state_dict),
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "val_result": 71.5,
        },
        path,
    )
    return path


def coop_state_dict(ctx: torch.Tensor, n_cls: int = 4) -> dict[str, torch.Tensor]:
    dim = ctx.shape[-1]
    return {"ctx": ctx, "token_prefix": torch.zeros(n_cls, 1, dim), "token_suffix": torch.zeros(n_cls, 8, dim)}


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_that_runs_code_is_refused_and_the_code_never_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(
        {"weights": torch.ones(2), "payload": RunsShellCommand(marker)}, path, _use_new_zipfile_serialization=zip_format
    )

    for reader in (load_weights_only, read_state_dict, read_coop_prompt):
        with pytest.raises(CftoolError) as error:
            reader(path)
        assert_one_line_about(error, path, "refused to unpickle: it references", "system", "weights_only=True")
    assert not marker.exists()
    # Control: the payload is live, so the refusal above is what kept it from running.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_corrupt_and_foreign_files_are_reported(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    truncated = tmp_path / "cut.pt"
    torch.save({"a": torch.ones(100)}, tmp_path / "whole.pt")
    truncated.write_bytes((tmp_path / "whole.pt").read_bytes()[:300])

    for path in (text, truncated):
        with pytest.raises(CftoolError) as error:
            load_weights_only(path)
        assert_one_line_about(error, path, "not a readable PyTorch checkpoint")
    with pytest.raises(CftoolError) as error:
        load_weights_only(tmp_path / "missing.pt")
    assert_one_line_about(error, tmp_path / "missing.pt", "no such file")
    with pytest.raises(CftoolError) as error:
        read_state_dict(tmp_path)
    assert_one_line_about(error, tmp_path, "is a folder")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_archives_give_their_weights_as_a_state_dict_and_nothing_else(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    layer = torch.nn.Linear(2, 2)
    torch.jit.script(layer).save(str(path))
    state = read_state_dict(path)
    assert state.keys() == {"weight", "bias"}
    assert torch.equal(state["weight"], layer.weight.detach())
    with pytest.raises(CftoolError) as error:  # a prompt or trainer state is never a TorchScript archive
        load_weights_only(path)
    assert_one_line_about(error, path, "TorchScript", "--zs ARCH:")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CftoolError) as error:
        read_state_dict(tmp_path / "cut.pt")
    assert_one_line_about(error, tmp_path / "cut.pt", "not a readable")


def test_flat_state_dicts_are_read_from_pickles_and_safetensors(tmp_path):
    state = {"visual.proj": torch.randn(4, 2), "logit_scale": torch.tensor(4.6)}
    torch.save(state, tmp_path / "model.bin")
    save_file(state, tmp_path / "model.safetensors")
    for name in ("model.bin", "model.safetensors"):
        loaded = read_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_training_checkpoints_are_unwrapped_and_ddp_prefix_removed(tmp_path):
    state = {"module.visual.proj": torch.randn(4, 2), "module.logit_scale": torch.tensor(4.6)}
    path = tmp_path / "epoch_10.pt"
    torch.save({"epoch": 10, "name": "run", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    loaded = read_state_dict(path)
    assert sorted(loaded) == ["logit_scale", "visual.proj"]
    assert torch.equal(loaded["visual.proj"], state["module.visual.proj"])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ([torch.ones(2)], "holds a list, not a state dict"),
        ({}, "the state dict is empty"),
        ({"model": {"w": torch.ones(1)}, "epoch": 3}, "(entries: 'model' (dict), 'epoch' (int))"),
    ],
)
def test_things_that_are_not_state_dicts_are_reported(tmp_path, content, fragment):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CftoolError) as error:
        read_state_dict(path)
    assert_one_line_about(error, path, fragment)


def test_corrupt_safetensors_state_dict_is_reported(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(10)}, path)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CftoolError) as error:
        read_state_dict(path)
    assert_one_line_about(error, path, "truncated")


def test_coop_prompt_is_read_from_a_real_dassl_checkpoint(tmp_path):
    ctx = torch.randn(16, 32)
    path = save_dassl_checkpoint(tmp_path / "prompt_learner" / "model.pth.tar-50", coop_state_dict(ctx))

    loaded, info = read_coop_prompt(path)

    assert torch.equal(loaded, ctx) and not loaded.requires_grad
    assert {key: info[key] for key in ("epoch", "class_specific", "ignored")} == {
        "epoch": 50,
        "class_specific": False,
        "ignored": [],
    }
    assert torch.equal(info["token_prefix"], coop_state_dict(ctx)["token_prefix"])
    successor = load_weights_only(path)["scheduler"]["successor"]
    assert isinstance(successor, PickledTrainingState)  # inert, not a live torch scheduler
    assert successor.pickled_state["T_max"] == 50


def test_class_specific_context_and_kgcoop_extras(tmp_path):
    ctx = torch.randn(4, 16, 32).half()
    state = coop_state_dict(ctx)
    # KgCoOp's prompt learner also carries an unused meta_net and bias_vectors.
    state.update({"meta_net.linear1.weight": torch.zeros(32, 32), "bias_vectors": torch.zeros(1, 32)})
    path = save_dassl_checkpoint(tmp_path / "model.pth.tar-100", state, epoch=100)

    loaded, info = read_coop_prompt(path)

    assert loaded.dtype == torch.float16 and torch.equal(loaded, ctx)
    assert info["class_specific"] is True and info["epoch"] == 100
    assert info["ignored"] == ["bias_vectors", "meta_net.linear1.weight"]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            {"state_dict": {"token_prefix": torch.zeros(1), "weight": torch.zeros(1)}, "epoch": 3},
            "no 'ctx' prompt tensor in its state dict (found: 'token_prefix', 'weight')",
        ),
        ({"state_dict": {"ctx": torch.zeros(5)}}, "'ctx' is torch.float32 [5]"),
        ({"state_dict": {"ctx": torch.zeros(2, 3, dtype=torch.int64)}}, "expected a float tensor"),
        ({"state_dict": [torch.zeros(2, 3)]}, "'state_dict' entry is a list"),
        (torch.zeros(2, 3), "holds a Tensor, not a Dassl checkpoint"),
    ],
)
def test_files_without_a_usable_ctx_are_reported(tmp_path, content, fragment):
    path = tmp_path / "model.pth.tar-5"
    torch.save(content, path)
    with pytest.raises(CftoolError) as error:
        read_coop_prompt(path)
    assert_one_line_about(error, path, fragment)
