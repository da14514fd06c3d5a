"""No run is lost to its output: outputs are checked before work, a full disk is one line and leaves nothing, files
left by a killed run are replaced, and a checkpoint and its prototypes are written as a pair."""

import errno
import subprocess

import pytest
import torch
from conftest import one_line_error

from cftool.io import checkpoint

DATA = [
    "--zs",
    "tiny",
    "--data",
    "toy:mnist",
    "--classes",
    "base",
    "--shots",
    "2",
    "--iterations",
    "1",
    "--batch-size",
    "4",
    "--device",
    "cpu",
]


def test_an_unwritable_output_is_found_before_training(cli, tmp_path, monkeypatch):
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the output folder should be")
    import importlib

    trained = []
    # The module, which `cftool.train` shadows with its function of the same name.
    module = importlib.import_module("cftool.train.finetune")
    monkeypatch.setattr(module, "_finetune", lambda *args: trained.append(args))
    error = one_line_error(cli("finetune", *DATA, "-o", blocker / "coop.safetensors"))
    assert "coop.safetensors: cannot write" in error
    assert trained == []  # refused before any training


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: the real ENOSPC of a full disk (needs the right to mount, as CI's root has)."""
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(cli, tmp_path, full_disk):
    model = tmp_path / "base.safetensors"
    assert cli("export", "--zs", "tiny", "-o", model).code == 0
    for output in (full_disk / "base.safetensors", full_disk / "base.pt"):
        error = one_line_error(cli("export", model, "-o", output))
        assert str(output) in error and "the disk is full" in error
        assert list(full_disk.iterdir()) == []
    error = one_line_error(cli("finetune", *DATA, "--method", "full", "-o", full_disk / "full.safetensors"))
    assert "the disk is full" in error
    assert list(full_disk.iterdir()) == []


def test_a_full_disk_under_any_writer_is_reported_as_such(tmp_path, monkeypatch):
    def disk_full(tensor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_tensor_bytes", disk_full)
    with pytest.raises(checkpoint.CftoolError, match="the disk is full") as error:
        checkpoint.save_checkpoint(tmp_path / "x.safetensors", {"a": torch.zeros(3)}, header=None)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_a_killed_run_are_replaced_by_the_next_write(tmp_path):
    output = tmp_path / "out.safetensors"
    orphan = tmp_path / ".out.safetensors.tmp-dead0000"
    orphan.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / ".other.safetensors.tmp-dead0000"
    unrelated.write_bytes(b"someone else's")
    checkpoint.save_checkpoint(output, {"a": torch.zeros(3)}, header=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name, output.name]


def test_prototypes_a_killed_run_left_without_their_checkpoint_do_not_block_the_rerun(cli, tmp_path):
    output = tmp_path / "coop.safetensors"
    assert cli("finetune", *DATA, "-o", output).code == 0
    output.unlink()  # as if killed between writing the prototypes and the checkpoint
    assert cli("finetune", *DATA, "-o", output).code == 0
    assert output.is_file()
    assert "--force" in one_line_error(cli("finetune", *DATA, "-o", output))  # a complete pair is kept


def test_ctrl_c_during_evaluation_is_one_line_exit_130_and_writes_nothing(cli, tmp_path, monkeypatch):
    import os
    import signal

    from cftool.eval.compare import FeatureCache

    encode = FeatureCache.get

    def interrupted_while_encoding(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, delivered while images are being encoded
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "get", interrupted_while_encoding)
    report = tmp_path / "report.json"
    result = cli("eval", "--zs", "tiny", "--benchmark", "mtil-tiny", "-o", report)
    assert result.code == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "interrupted: nothing was written"
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_the_cli_is_still_loading_is_one_line_too(monkeypatch, capsys):
    import builtins
    import sys

    from cftool.__main__ import main

    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):
        if name == "cftool.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cftool.cli")
    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted: nothing was written\n"


@pytest.mark.parametrize(
    "outputs",
    [
        ["-o", "{blocked}/r.json"],
        ["--path", "zs", "zs", "--plot", "{blocked}/p.png"],
        ["--sessions", "zs", "--heatmap", "{blocked}/h.png"],
        ["--path", "zs", "zs", "--plot", "{free}/same.pdf", "-o", "{free}/same.pdf"],
    ],
    ids=["json", "plot", "heatmap", "plot-is-json"],
)
def test_every_output_of_eval_is_checked_before_any_work(cli, tmp_path, monkeypatch, outputs):
    blocked = tmp_path / "runs"
    blocked.write_text("a file where the output folder should be")
    loaded = []
    monkeypatch.setattr("cftool.zoo.load_model", lambda *args: loaded.append(args))
    args = [arg.format(blocked=blocked, free=tmp_path) for arg in outputs]
    error = one_line_error(cli("eval", "--zs", "tiny", "--data", "toy:mnist", *args))
    assert ("cannot write" in error) if "{blocked}" in " ".join(outputs) else ("is also the file of" in error)
    assert loaded == []  # refused before the model was even loaded
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]


def test_a_run_killed_between_its_two_files_never_leaves_new_prototypes_beside_an_old_checkpoint(
    cli, tmp_path, monkeypatch
):
    import importlib

    from cftool.io.checkpoint import open_checkpoint

    output = tmp_path / "f.safetensors"
    assert cli("finetune", *DATA, "-o", output).code == 0  # the old pair, of mnist
    module = importlib.import_module("cftool.train.finetune")
    real_save = module.save_checkpoint
    on_disk_when_killed = []

    def killed_before_the_checkpoint(path, tensors, header, overwrite=False):
        if header.kind == "prototypes":
            return real_save(path, tensors, header, overwrite=overwrite)
        on_disk_when_killed.extend(sorted(p.name for p in tmp_path.iterdir()))
        with open_checkpoint(tmp_path / "f.prototypes.safetensors") as prototypes:
            on_disk_when_killed.append(prototypes.header.task)
        raise KeyboardInterrupt  # a kill here leaves what is on disk now

    monkeypatch.setattr(module, "save_checkpoint", killed_before_the_checkpoint)
    new_task = [arg if arg != "toy:mnist" else "toy:food" for arg in DATA]
    assert cli("finetune", *new_task, "-o", output, "--force").code == 130
    # the new metrics and prototypes (food), without the old checkpoint (mnist)
    assert on_disk_when_killed == ["f.metrics.jsonl", "f.prototypes.safetensors", "food"]
