"""Weights files and model folders that would run code, mislead or hang: TorchScript archives are read as data
(torch.jit.load runs the code they hold), every pickle reader refuses a payload, a base is always the weights it
names (never a random model), a local-dir: config is checked before open_clip builds from it, a hub id is checked
before the cache is searched, and an import refuses NaN."""

import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error
from safetensors.torch import save_file
from torch import nn

from cftool.errors import CftoolError
from cftool.io.foreign import read_state_dict
from cftool.train.finetune import state_path
from cftool.zoo import load_model
from cftool.zoo.base import TINY_WEIGHTS, architecture
from cftool.zoo.base_weights import open_base

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

OPENAI_EXTRAS = {"input_resolution": 64, "context_length": 32, "vocab_size": 49408}


class RunsShellCommand:
    """What a malicious pickle holds: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class MarkerWritingLayerNorm(nn.Module):
    """A LayerNorm whose TorchScript ``__setstate__`` writes a file (TorchScript's torch.save): torch.jit.load runs
    it while loading the archive, before anyone asks for the weights."""

    def __init__(self, norm: nn.LayerNorm, marker: str):
        super().__init__()
        self.weight, self.bias = norm.weight, norm.bias
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, [self.weight.size(0)], self.weight, self.bias, 1e-5)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, torch.Tensor, str, bool]:
        return (self.weight, self.bias, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor, str, bool]) -> None:
        self.weight, self.bias, self.marker, self.training = state
        torch.save(self.weight, self.marker)


def openai_like_tiny_clip(marker: Path | None = None) -> nn.Module:
    """The embedded `tiny` CLIP as OpenAI released CLIP: QuickGELU, fp16, traced, the three extra entries as buffers
    and the attention mask as a plain attribute (a constant of the trace). With ``marker``, its final LayerNorm is a
    scripted module that writes that file when torch.jit.load restores it."""
    import open_clip

    model = open_clip.CLIP(**architecture("cftool-tiny", quick_gelu=True)).eval()
    model.load_state_dict(load_model("tiny").model.state_dict())
    attn_mask = model.attn_mask
    del model.attn_mask
    model.attn_mask = attn_mask
    for name, value in OPENAI_EXTRAS.items():
        model.__dict__.pop(name, None)  # open_clip keeps two of them as ints
        model.register_buffer(name, torch.tensor(value))
    if marker is not None:
        model.ln_final = torch.jit.script(MarkerWritingLayerNorm(model.ln_final, str(marker)))
    inputs = (torch.zeros(1, 3, 64, 64), torch.zeros(1, 32, dtype=torch.long))
    return torch.jit.trace(model, inputs, check_trace=False).half()


@pytest.fixture(scope="module")
def openai_like_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("openai") / "ViT-tiny.pt"
    openai_like_tiny_clip().save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_state():
    return dict(load_model("tiny").model.state_dict())


def assert_reads_as_torch_jit_load_does(path: Path) -> None:
    ours, theirs = read_state_dict(path), dict(torch.jit.load(str(path)).state_dict())
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype and ours[name].stride() == tensor.stride(), name
        assert torch.equal(ours[name], tensor), name


class ManyKinds(nn.Module):
    """Parameters, buffers (one not persistent), optional and shared submodules, plain tensor attributes and
    dtypes other than float32: everything state_dict() has to tell apart."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4, bias=False)
        self.norm = nn.BatchNorm1d(4)
        self.attn = nn.MultiheadAttention(4, 2)
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])
        self.conv = nn.Conv2d(1, 2, 3)
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.bfloat16))
        self.register_buffer("counts", torch.arange(6, dtype=torch.int32).reshape(2, 3).t())  # not contiguous
        self.register_buffer("cache", torch.ones(2), persistent=False)
        self.plain = torch.full((2,), 7.0)  # neither parameter nor buffer
        self.shared = self.layers[0]

    def forward(self, x):
        h = self.norm(self.linear(x))
        h, _ = self.attn(h[None], h[None], h[None])
        for layer in self.layers:
            h = layer(h)
        h = h + self.shared(h)
        extras = self.conv(torch.ones(1, 1, 4, 4)).sum() + self.counts.sum() + self.cache.sum() + self.plain.sum()
        return h.sum() + self.scale.float() + extras


@pytest.mark.parametrize("compile_with", ["trace", "script"])
def test_torchscript_archives_read_as_data_give_exactly_what_torch_jit_load_gives(tmp_path, compile_with):
    module = ManyKinds().eval()
    compiled = torch.jit.trace(module, torch.randn(2, 3)) if compile_with == "trace" else torch.jit.script(module)
    compiled.save(str(tmp_path / "many.pt"))
    assert_reads_as_torch_jit_load_does(tmp_path / "many.pt")


def test_an_archive_traced_as_openais_reads_as_torch_jit_load_does_and_loads_with_quick_gelu(openai_like_archive):
    assert_reads_as_torch_jit_load_does(openai_like_archive)
    zoo = load_model(f"cftool-tiny:{openai_like_archive}")
    assert zoo.architecture["quick_gelu"] is True
    archive = read_state_dict(openai_like_archive)
    for name, tensor in zoo.model.state_dict().items():
        assert torch.equal(tensor, archive[name].float()), name


def test_an_archive_written_big_endian_reads_in_this_machines_byte_order(tmp_path):
    layer = nn.Linear(3, 4)  # float32 storages only, so that each record swaps in groups of 4 bytes
    torch.jit.script(layer).save(str(tmp_path / "little.pt"))
    with zipfile.ZipFile(tmp_path / "little.pt") as little, zipfile.ZipFile(tmp_path / "big.pt", "w") as big:
        for info in little.infolist():
            data = little.read(info)
            if "/data/" in info.filename:
                data = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(-1, 4).flip(1).numpy().tobytes()
            elif info.filename.endswith("/byteorder"):
                data = b"big"
            big.writestr(info, data)
    state = read_state_dict(tmp_path / "big.pt")
    assert torch.equal(state["weight"], layer.weight.detach()) and torch.equal(state["bias"], layer.bias.detach())


def test_a_torchscript_archive_that_writes_a_file_when_loaded_is_refused_by_every_command(cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "ViT-tiny.pt"
    openai_like_tiny_clip(marker).save(str(evil))
    model_file = tmp_path / "model.safetensors"
    assert cli("export", "--zs", "tiny", "-o", model_file).code == 0
    out = tmp_path / "out.safetensors"
    commands = {
        "eval": ["eval", "--zs", f"cftool-tiny:{evil}", "--data", "toy:mnist"],
        "import": ["import", evil, "--zs", "tiny", "-o", out],
        "delta": ["delta", model_file, "--zs", f"cftool-tiny:{evil}", "-o", out],
    }
    for command in commands.values():
        line = one_line_error(cli(*command))
        assert str(evil) in line and ("__getstate__" in line or "__setstate__" in line) and "state dict" in line
        assert not marker.exists() and not out.exists()
    # Control: the payload is live, so the refusals above are what kept it from running.
    torch.jit.load(str(evil))
    assert marker.exists()


def test_an_archive_whose_data_pkl_calls_a_python_function_is_refused(openai_like_archive, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(RunsShellCommand(marker), protocol=2)
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(openai_like_archive) as source, zipfile.ZipFile(evil, "w") as archive:
        for info in source.infolist():
            archive.writestr(info, payload if info.filename.endswith("/data.pkl") else source.read(info))
    with pytest.raises(CftoolError, match=r"refused to unpickle .*references posix\.system") as error:
        read_state_dict(evil)
    assert "\n" not in str(error.value) and not marker.exists()
    pickle.loads(payload)  # control: the payload is live
    assert marker.exists()


def test_no_code_in_the_package_calls_torch_jit_load_or_torch_load_without_weights_only():
    import ast

    import cftool

    for source in Path(cftool.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"):
                continue
            called = ast.unparse(node.func)
            where = f"{source}:{node.lineno}: {ast.unparse(node)}"
            assert called not in ("torch.jit.load", "jit.load"), where
            if called == "torch.load":
                assert any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords), where


def test_a_broadcast_view_that_copying_would_make_terabytes_is_refused(cli, tmp_path):
    huge = torch.zeros(1).expand(10**6, 10**6)  # one stored float, 10^12 elements once copied
    torch.save({"text_projection": huge}, tmp_path / "weights.pt")
    prompt = tmp_path / "prompt_learner" / "model.pth.tar-5"
    prompt.parent.mkdir()
    torch.save({"state_dict": {"ctx": huge}}, prompt)
    for source in (tmp_path / "weights.pt", prompt):
        line = one_line_error(cli("import", source, "--zs", "tiny", "-o", tmp_path / "out.safetensors"))
        assert f"{source}: holds a tensor of shape [1000000, 1000000]" in line and "broadcast view" in line


def snapshot(hub: Path, repo_id: str) -> Path:
    """huggingface_hub's cache layout for one repository, as a download leaves it: refs/main and one snapshot."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / ("0" * 40)
    folder.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return folder


def tiny_config() -> dict:
    return {"model_cfg": architecture("cftool-tiny"), "preprocess_cfg": {}}


def condu_session(folder: Path, state: dict, **replaced) -> Path:
    """A one-task ConDU session folder for `tiny`, with any of its three files' contents ``replaced``."""
    folder.mkdir()
    unified = {name: torch.zeros_like(tensor) for name, tensor in state.items() if tensor.is_floating_point()}
    contents = {
        "unified.pth": unified,
        "Food.pth": {
            "masks": {name: torch.ones_like(t, dtype=torch.bool) for name, t in unified.items()},
            "rescalers": torch.tensor(0.5),
        },
        "prototypes.pth": {"Food": torch.zeros(3, 128)},
        **replaced,
    }
    for name, content in contents.items():
        torch.save(content, folder / name)
    return folder


# Each makes a file or folder holding ``payload`` and returns the command that reads it and the file that command
# would write (None where it writes none).


def _dassl_prompt(tmp_path, state, payload):
    path = tmp_path / "prompt_learner" / "model.pth.tar-5"
    path.parent.mkdir()
    torch.save({"state_dict": {"ctx": torch.zeros(4, 128), "evil": payload}, "epoch": 5}, path)
    out = tmp_path / "prompt.safetensors"
    return ["import", path, "--zs", "tiny", "-o", out], out


def _open_clip_import(tmp_path, state, payload):
    torch.save({**state, "evil": payload}, tmp_path / "finetuned.bin")
    out = tmp_path / "model.safetensors"
    return ["import", tmp_path / "finetuned.bin", "--zs", "tiny", "-o", out], out


def _zs_weights_file(tmp_path, state, payload):
    torch.save({**state, "evil": payload}, tmp_path / "weights.pt")
    return ["eval", "--zs", f"cftool-tiny:{tmp_path / 'weights.pt'}", "--data", "toy:mnist"], None


def _delta_base(tmp_path, state, payload):
    from cftool.kinds.convert import export_base

    with open_base("tiny") as base:
        model_file = export_base(base, tmp_path / "finetuned.safetensors", overwrite=False)
    torch.save({**state, "evil": payload}, tmp_path / "weights.pt")
    out = tmp_path / "delta.safetensors"
    return ["delta", model_file, "--zs", f"cftool-tiny:{tmp_path / 'weights.pt'}", "-o", out], out


def _local_dir_weights(tmp_path, state, payload):
    folder = local_dir(tmp_path, weights=None)
    torch.save({**state, "evil": payload}, folder / "open_clip_pytorch_model.bin")
    return ["eval", "--zs", f"local-dir:{folder}", "--data", "toy:mnist"], None


def _hub_cache_weights(tmp_path, state, payload):
    folder = snapshot(tmp_path / "hub", "me/tiny-clip")
    (folder / "open_clip_config.json").write_text(json.dumps(tiny_config()))
    torch.save({**state, "evil": payload}, folder / "open_clip_pytorch_model.bin")
    return ["eval", "--zs", "hf-hub:me/tiny-clip", "--data", "toy:mnist"], None


def _pretrained_tag_cache(tmp_path, state, payload):
    folder = snapshot(tmp_path / "hub", "timm/vit_base_patch32_clip_224.openai")
    torch.save({"logit_scale": torch.zeros(()), "evil": payload}, folder / "open_clip_pytorch_model.bin")
    return ["eval", "--zs", "ViT-B-32:openai", "--data", "toy:mnist"], None


def _condu_file(name):
    def session(tmp_path, state, payload):
        folder = condu_session(tmp_path / "session", state, **{name: {"evil": payload}})
        out = tmp_path / "unified.safetensors"
        return ["import", folder, "--zs", "tiny", "-o", out], out

    return session


def _trainer_state(tmp_path, state, payload):
    out = tmp_path / "coop.safetensors"
    torch.save({"step": 1, "evil": payload}, state_path(out))
    data = ["--zs", "tiny", "--data", "toy:mnist", "--classes", "base", "--shots", "1", "--device", "cpu"]
    return ["finetune", *data, "--iterations", "2", "--batch-size", "5", "-o", out, "--resume"], out


PICKLE_READERS = {
    "Dassl prompt (import)": _dassl_prompt,
    "open_clip state dict (import)": _open_clip_import,
    "--zs ARCH:file.pt (eval)": _zs_weights_file,
    "--zs ARCH:file.pt (delta)": _delta_base,
    "local-dir: weights": _local_dir_weights,
    "hf-hub: cached weights": _hub_cache_weights,
    "pretrained tag, cached weights": _pretrained_tag_cache,
    "ConDU unified.pth": _condu_file("unified.pth"),
    "ConDU task triggers": _condu_file("Food.pth"),
    "ConDU prototypes.pth": _condu_file("prototypes.pth"),
    "trainer state (--resume)": _trainer_state,
}


@pytest.mark.parametrize("make_command", PICKLE_READERS.values(), ids=PICKLE_READERS.keys())
def test_every_reader_of_a_pickle_refuses_a_payload_in_one_line(cli, tmp_path, tiny_state, monkeypatch, make_command):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    marker = tmp_path / "pwned"
    command, output = make_command(tmp_path, tiny_state, RunsShellCommand(marker))
    line = one_line_error(cli(*command))
    assert "refused to unpickle" in line or "not a readable trainer state" in line, line
    assert not marker.exists()
    assert output is None or not output.exists()


def local_dir(tmp_path: Path, weights: dict | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(tiny_config()))
    if weights is not None:
        save_file(weights, folder / "open_clip_model.safetensors")
    return folder


def test_a_local_dir_without_weights_is_refused_not_built_at_random(cli, tmp_path):
    folder = local_dir(tmp_path, weights=None)
    line = one_line_error(cli("eval", "--zs", f"local-dir:{folder}", "--data", "toy:mnist"))
    assert str(folder) in line and "open_clip_model.safetensors" in line and "no weights" in line


@pytest.mark.parametrize(
    ("make_weights", "fragment"),
    [
        (lambda folder: _fifo(folder / "open_clip_model.safetensors"), "is not a regular file"),
        (lambda folder: (folder / "model.pth").symlink_to(folder / "model.pth"), "Too many levels of symbolic links"),
        (lambda folder: [(folder / name).write_bytes(b"") for name in ("a.pt", "b.bin")], "several weights files"),
    ],
    ids=["a FIFO", "a symlink loop", "two unpreferred files"],
)
def test_a_local_dir_whose_weights_cannot_be_read_or_chosen_is_one_line(cli, tmp_path, make_weights, fragment):
    folder = local_dir(tmp_path, weights=None)
    make_weights(folder)
    line = one_line_error(cli("eval", "--zs", f"local-dir:{folder}", "--data", "toy:mnist"))
    assert str(folder) in line and fragment in line and "not in the local cache" not in line, line


def _half_of(state: dict) -> dict:
    return dict(list(state.items())[::2])


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [
        (lambda state: {"unrelated.weight": torch.zeros(2)}, "1 unexpected ('unrelated.weight')"),
        (_half_of, "missing"),
        (lambda state: {}, "the state dict is empty"),
    ],
    ids=["no key of the model", "half of its keys", "empty"],
)
def test_weights_that_do_not_cover_the_model_are_refused_for_every_spec_form(
    tmp_path, tiny_state, monkeypatch, weights, fragment
):
    chosen = {name: tensor.contiguous() for name, tensor in weights(tiny_state).items()}
    folder = local_dir(tmp_path, weights=None)
    torch.save(chosen, folder / "open_clip_pytorch_model.bin")
    hub = snapshot(tmp_path / "hub", "me/tiny-clip")
    (hub / "open_clip_config.json").write_text(json.dumps(tiny_config()))
    torch.save(chosen, hub / "open_clip_pytorch_model.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for spec in (f"local-dir:{folder}", "hf-hub:me/tiny-clip", f"cftool-tiny:{folder / 'open_clip_pytorch_model.bin'}"):
        with pytest.raises(CftoolError) as error:
            load_model(spec)
        message = str(error.value)
        assert "\n" not in message and "open_clip_pytorch_model.bin" in message and fragment in message, message


def test_an_empty_state_dict_in_the_cache_of_a_pretrained_tag_is_named_not_called_missing(tmp_path, monkeypatch):
    folder = snapshot(tmp_path / "hub", "timm/vit_base_patch32_clip_224.openai")
    torch.save({}, folder / "open_clip_pytorch_model.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CftoolError, match="open_clip_pytorch_model.bin: the state dict is empty") as error:
        load_model("ViT-B-32:openai")
    assert "\n" not in str(error.value)


def test_a_hub_model_whose_config_is_cached_but_not_its_weights_says_so(tmp_path, monkeypatch):
    hub = snapshot(tmp_path / "hub", "me/tiny-clip")
    (hub / "open_clip_config.json").write_text(json.dumps(tiny_config()))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CftoolError, match=r"open_clip_config.json is cached, not its weights") as error:
        load_model("hf-hub:me/tiny-clip")
    assert "\n" not in str(error.value)


def test_tiny_without_its_shipped_weights_is_an_error_not_a_random_model(tmp_path, monkeypatch):
    missing = tmp_path / "tiny.safetensors"
    monkeypatch.setattr("cftool.zoo.base.TINY_WEIGHTS", missing)
    for load in (load_model, open_base):
        with pytest.raises(CftoolError, match="its weights .* are missing") as error:
            load("tiny")
        assert "\n" not in str(error.value)


def test_torchscript_weights_in_a_local_dir_load_with_quick_gelu(openai_like_archive, tmp_path):
    folder = local_dir(tmp_path, weights=None)
    (folder / "open_clip_pytorch_model.bin").symlink_to(openai_like_archive)
    zoo = load_model(f"local-dir:{folder}")
    assert zoo.architecture["quick_gelu"] is True
    assert zoo.weights_sha256 == load_model(f"cftool-tiny:{openai_like_archive}").weights_sha256


def _with_model_cfg(**changes):
    config = tiny_config()
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (config["model_cfg"][section] if section else config["model_cfg"])[name] = value
    return json.dumps(config)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


BROKEN_CONFIGS = {
    "malformed JSON": ('{"model_cfg": {', "not valid JSON (Expecting property name"),
    "a JSON list": ("[1, 2]", "holds a JSON list, not an object"),
    "no model_cfg": ('{"preprocess_cfg": {}}', "no model_cfg object (found: 'preprocess_cfg')"),
    "unknown key": (_with_model_cfg(vision_cfg__wdith=16), "unknown key model_cfg.vision_cfg.wdith"),
    "unknown top-level key": (_with_model_cfg(embed_dims=128), "unknown key model_cfg.embed_dims"),
    "a string for a number": (_with_model_cfg(text_cfg__width="128"), 'model_cfg.text_cfg.width is "128" (a JSON str)'),
    "NaN for a number": ('{"model_cfg": {"init_logit_scale": NaN}}', "model_cfg.init_logit_scale is NaN"),
    "zero std": (
        json.dumps({**tiny_config(), "preprocess_cfg": {"std": [0.0, 0.5, 0.5]}}),
        "standard deviation must be positive",
    ),
    "not UTF-8": (b'{"model_cfg": {"\xff": 1}}', "not UTF-8 text (byte 16)"),
    "nested 200k deep": ('{"model_cfg": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested too deep"),
    "a model too large for memory": (_with_model_cfg(text_cfg__width=10**9), "more than this machine's"),
    "an image too large for memory": (_with_model_cfg(vision_cfg__image_size=10**7), "more than this machine's"),
    "a million layers": (_with_model_cfg(text_cfg__layers=10**6, text_cfg__width=8), "asks for 1000000 layers"),
    "zero attention heads": (_with_model_cfg(text_cfg__heads=0), "open_clip cannot build the model"),
    "a symlink loop": (lambda path: path.symlink_to(path), "Too many levels of symbolic links"),
    "/dev/zero": (lambda path: path.symlink_to("/dev/zero"), "is not a regular file"),
    "a FIFO": (_fifo, "is not a regular file"),
    "a folder": (lambda path: path.mkdir(), "is not a regular file"),
    "2 MiB": (" " * 2**21 + "{}", "far larger than a model config"),
}


@pytest.mark.parametrize(("content", "fragment"), BROKEN_CONFIGS.values(), ids=BROKEN_CONFIGS.keys())
def test_a_broken_local_dir_config_is_one_precise_line(cli, tmp_path, content, fragment):
    folder = tmp_path / "model"
    folder.mkdir()
    config = folder / "open_clip_config.json"
    if callable(content):
        content(config)
    else:
        config.write_bytes(content if isinstance(content, bytes) else content.encode())
    (folder / "open_clip_model.safetensors").symlink_to(TINY_WEIGHTS)
    line = one_line_error(cli("eval", "--zs", f"local-dir:{folder}", "--data", "toy:mnist"))
    assert str(config) in line and fragment in line, line


def test_a_tokenizer_whose_package_is_missing_is_named(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(_with_model_cfg(text_cfg__hf_tokenizer_name="bert-base-uncased"))
    (folder / "open_clip_model.safetensors").symlink_to(TINY_WEIGHTS)
    line = one_line_error(cli("eval", "--zs", f"local-dir:{folder}", "--data", "toy:mnist"))
    assert "model_cfg.text_cfg.hf_tokenizer_name ('bert-base-uncased') needs the transformers package" in line


def test_open_clips_own_configs_pass_the_checks():
    import open_clip

    from cftool.zoo.hub_folder import check_hub_config

    for config_file in (Path(open_clip.__file__).parent / "model_configs").glob("*.json"):
        model_cfg = json.loads(config_file.read_text())
        needs_transformers = "hf_tokenizer_name" in model_cfg["text_cfg"] or "hf_model_name" in model_cfg["text_cfg"]
        if needs_transformers and "transformers" not in sys.modules:
            continue
        check_hub_config({"model_cfg": model_cfg, "preprocess_cfg": {"std": [0.5], "size": [224, 224]}}, config_file)


@pytest.mark.parametrize("spec", ["hf-hub:a b/c", "hf-hub:/etc/passwd", "hf-hub:../../etc"])
def test_a_hub_spec_that_is_not_a_repository_id_is_one_line(cli, spec):
    line = one_line_error(cli("eval", "--zs", spec, "--data", "toy:mnist"))
    assert f"--zs '{spec}': not a Hugging Face Hub repository id" in line


def _nan_ctx(tmp_path, state):
    path = tmp_path / "prompt_learner" / "model.pth.tar-5"
    path.parent.mkdir()
    ctx = torch.zeros(4, 128)
    ctx[1, 2] = float("nan")
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 5}, path)
    return path, "'ctx' holds 1 non-finite values"


def _inf_weight(tmp_path, state):
    state = dict(state)
    state["text_projection"] = state["text_projection"].clone()
    state["text_projection"][0, 0] = float("inf")
    torch.save(state, tmp_path / "finetuned.bin")
    return tmp_path / "finetuned.bin", "'text_projection' holds 1 non-finite values"


def _condu_with(name, content_of, fragment):
    def session(tmp_path, state):
        unified = {name: torch.zeros_like(t) for name, t in state.items() if t.is_floating_point()}
        folder = condu_session(tmp_path / "session", state, **{name: content_of(unified)})
        return folder, fragment

    return session


def _nan_unified(unified):
    unified["logit_scale"] = torch.tensor(float("nan"))
    return unified


NON_FINITE_IMPORTS = {
    "Dassl ctx": _nan_ctx,
    "open_clip weights": _inf_weight,
    "ConDU unified delta": _condu_with("unified.pth", _nan_unified, "'logit_scale' holds 1 non-finite values"),
    "ConDU rescaler": _condu_with(
        "Food.pth",
        lambda unified: {
            "masks": {name: torch.ones_like(t, dtype=torch.bool) for name, t in unified.items()},
            "rescalers": torch.tensor(float("inf")),
        },
        "'rescalers' is inf",
    ),
    "ConDU prototypes": _condu_with(
        "prototypes.pth", lambda unified: {"Food": torch.full((3, 128), float("nan"))}, "'Food' holds 384"
    ),
}


@pytest.mark.parametrize("make_source", NON_FINITE_IMPORTS.values(), ids=NON_FINITE_IMPORTS.keys())
def test_an_import_refuses_nan_and_inf_and_writes_nothing(cli, tmp_path, tiny_state, make_source):
    source, fragment = make_source(tmp_path, tiny_state)
    out = tmp_path / "out" / "imported.safetensors"
    out.parent.mkdir()
    line = one_line_error(cli("import", source, "--zs", "tiny", "-o", out))
    assert fragment in line and "diverged" in line, line
    assert not any(out.parent.iterdir())


def test_published_weights_are_adjusted_to_the_model_as_open_clips_loader_adjusts_them(tiny_state, tmp_path):
    """cftool reads hub and tag weights itself, so it applies open_clip's own adjustments: here a 1-element
    logit_scale (as some releases store it) and the text position-id buffer older transformers saved."""
    published = {name: tensor.clone() for name, tensor in tiny_state.items()}
    published["logit_scale"] = published["logit_scale"].reshape(1)
    published["text.transformer.embeddings.position_ids"] = torch.arange(8)
    zoo = load_model(f"local-dir:{local_dir(tmp_path, weights=published)}")
    assert zoo.model.logit_scale.shape == tiny_state["logit_scale"].shape
    assert zoo.weights_sha256 == load_model("tiny").weights_sha256
