"""The hash of a base's weights file is remembered between commands while the file is unchanged, and never
after it has changed; models are built without drawing the weights that loading replaces."""

import os
import time

import pytest
import torch

from cftool.io import remembered_hashes
from cftool.io.checkpoint import tensors_sha256
from cftool.io.remembered_hashes import remembered_sha256


class Hasher:
    """A stand-in for hashing a file: its bytes' hash, counting the calls."""

    def __init__(self, file):
        self.file, self.calls = file, 0

    def __call__(self) -> str:
        import hashlib

        self.calls += 1
        return hashlib.sha256(self.file.read_bytes()).hexdigest()


@pytest.fixture
def settled(monkeypatch):
    """Files written by the test count as settled (changed long enough before they are hashed to be remembered)."""
    monkeypatch.setattr(remembered_hashes, "SETTLED_S", -60.0)


def test_a_settled_file_is_hashed_once(tmp_path, settled):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 100)
    hasher = Hasher(file)
    first = remembered_sha256(file, "ARCH:file", hasher)
    assert remembered_sha256(file, "ARCH:file", hasher) == first
    assert hasher.calls == 1
    remembered_sha256(file, "OTHER-ARCH:file", hasher)  # read as another spec: hashed anew
    assert hasher.calls == 2


def test_changed_contents_are_hashed_again_even_with_size_and_mtime_restored(tmp_path, settled):
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 100)
    stat = os.stat(file)
    hasher = Hasher(file)
    first = remembered_sha256(file, "spec", hasher)
    time.sleep(0.05)  # past the file system's timestamp tick
    file.write_bytes(b"b" * 100)  # as `cp -p` would leave it: same size, same inode, modification time set back
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = remembered_sha256(file, "spec", hasher)
    assert hasher.calls == 2
    assert second != first


def test_a_file_changed_just_before_hashing_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 100)
    hasher = Hasher(file)
    remembered_sha256(file, "spec", hasher)
    remembered_sha256(file, "spec", hasher)
    assert hasher.calls == 2
    assert not (tmp_path / "cache").exists()


def test_a_cache_folder_that_cannot_be_written_only_means_hashing_again(tmp_path, settled, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 100)
    hasher = Hasher(file)
    assert remembered_sha256(file, "spec", hasher) == remembered_sha256(file, "spec", hasher)
    assert hasher.calls == 2


def test_a_corrupt_entry_is_hashed_again(tmp_path, settled, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    file = tmp_path / "weights.bin"
    file.write_bytes(b"a" * 100)
    hasher = Hasher(file)
    first = remembered_sha256(file, "spec", hasher)
    (entry,) = (tmp_path / "cache" / "cftool" / "sha256").glob("*.json")
    entry.write_text('{"sha256": "not a hash"}')
    assert remembered_sha256(file, "spec", hasher) == first
    assert hasher.calls == 2


def test_the_model_and_the_tensor_reader_share_the_remembered_hash_of_tiny(monkeypatch, tmp_path):
    """`tiny` is installed, so settled: the first reading hashes it, every later one (model or tensors) remembers."""
    from cftool.zoo import base_weights, models
    from cftool.zoo.base_weights import open_base

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hashed = []
    for module in (base_weights, models):
        monkeypatch.setattr(module, "tensors_sha256", lambda tensors: hashed.append(1) or tensors_sha256(tensors))
    with open_base("tiny") as weights:
        digest = weights.sha256
    assert models.load_model("tiny").weights_sha256 == digest
    with open_base("tiny") as weights:
        assert weights.sha256 == digest
    assert len(hashed) == 1


def test_weights_loaded_over_the_base_are_hashed_not_remembered(monkeypatch, tmp_path):
    from cftool.zoo.models import load_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    zoo = load_model("tiny")
    base_sha256 = zoo.weights_sha256
    state = zoo.model.state_dict()
    state["logit_scale"] = state["logit_scale"] + 1
    zoo.load_state_dict(state, "a fine-tuned model")
    assert zoo.weights_sha256 == tensors_sha256(zoo.model.state_dict()) != base_sha256


def test_models_are_built_without_drawing_the_weights_that_loading_replaces(monkeypatch):
    """No initialiser runs while a model is built, the initialisers are back afterwards, and the model loaded equals
    its file, tensor for tensor."""
    from cftool.zoo.base_weights import open_base
    from cftool.zoo.models import load_model

    drawn = []
    original = torch.Tensor.normal_
    monkeypatch.setattr(torch.Tensor, "normal_", lambda self, *a, **k: drawn.append(1) or original(self, *a, **k))
    zoo = load_model("tiny")
    assert drawn == []
    torch.nn.init.normal_(torch.empty(3))
    assert drawn == [1]
    with open_base("tiny") as weights:
        assert all(torch.equal(zoo.model.state_dict()[name], weights[name]) for name in weights)
