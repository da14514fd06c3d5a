"""Real CLIP weights on random-weight ViT-B-16 files: OpenAI's release gets OpenAI's activation (QuickGELU), the
architecture is part of a base's identity, cached weights load without a network, and files stay usable when
their base moves."""

import json
import logging
import os
import subprocess
import sys
import time

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cftool.errors import CftoolError
from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.kinds.apply import open_applicable
from cftool.zoo import load_model
from cftool.zoo.base import OPENAI_EXTRA_KEYS
from cftool.zoo.base_weights import open_base

OPENAI_EXTRAS = {
    "input_resolution": torch.tensor(224),
    "context_length": torch.tensor(77),
    "vocab_size": torch.tensor(49408),
}


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """One random ViT-B-16 as OpenAI releases it (fp16, with its three extra entries) and as a plain open_clip
    state dict, and open_clip's own QuickGELU build of the same weights to compare features with."""
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-16-quickgelu").eval()
    state = {name: tensor.half() for name, tensor in reference.state_dict().items()}
    reference.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    folder = tmp_path_factory.mktemp("vit")
    torch.save({**state, **OPENAI_EXTRAS}, folder / "ViT-B-16.pt")
    torch.save(state, folder / "open_clip_model.bin")
    return folder, reference


def features(model, generator_seed=1):
    generator = torch.Generator().manual_seed(generator_seed)
    images = torch.randn(2, 3, 224, 224, generator=generator)
    text = open_clip.get_tokenizer("ViT-B-16")(["a photo of a cat.", "a photo of a dog."])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(text)


def test_openai_format_is_built_with_quick_gelu_and_matches_open_clips_quickgelu_config(vit):
    folder, reference = vit
    zoo = load_model(f"ViT-B-16:{folder / 'ViT-B-16.pt'}")
    assert zoo.architecture["quick_gelu"] is True
    assert not any(key in zoo.model.state_dict() for key in OPENAI_EXTRA_KEYS)
    for ours, theirs in zip(features(zoo.model), features(reference), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # The tensor-only path (delta, decouple --as model) records the same base as the model does.
    with open_base(f"ViT-B-16:{folder / 'ViT-B-16.pt'}") as base:
        assert base.sha256 == zoo.weights_sha256 and base.architecture == zoo.architecture


def test_a_plain_state_dict_follows_the_spelling_and_says_that_it_guessed(vit, caplog):
    folder, reference = vit
    plain = folder / "open_clip_model.bin"
    with caplog.at_level(logging.WARNING):
        gelu = load_model(f"ViT-B/16:{plain}")
    assert gelu.architecture["quick_gelu"] is False
    assert f"ViT-B-16-quickgelu:{plain}" in caplog.text
    quick = load_model(f"ViT-B-16-quickgelu:{plain}")
    assert quick.architecture == load_model(f"ViT-B-16:{folder / 'ViT-B-16.pt'}").architecture
    assert torch.allclose(features(quick.model)[0], features(reference)[0], atol=1e-5)
    assert not torch.allclose(features(gelu.model)[0], features(reference)[0], atol=1e-3)  # the activation matters


def test_a_prompt_made_on_the_gelu_build_is_refused_on_the_quick_gelu_build_of_the_same_weights(vit, tmp_path):
    folder, _ = vit
    gelu = load_model(f"ViT-B-16:{folder / 'open_clip_model.bin'}")
    quick = load_model(f"ViT-B-16:{folder / 'ViT-B-16.pt'}")
    assert gelu.weights_sha256 == quick.weights_sha256  # only the architecture tells them apart
    prompt = tmp_path / "prompt.safetensors"
    save_checkpoint(prompt, {"ctx": torch.zeros(4, 512)}, gelu.base_header("prompt", task="pets", method="coop"))
    assert json.loads(open_checkpoint(prompt).header.to_metadata()["cftool.base_arch"])["quick_gelu"] is False
    with pytest.raises(CftoolError, match=r"quick_gelu=False \(the model in use: True\)") as error:
        open_applicable(prompt, quick, quick.weights_sha256)
    assert "\n" not in str(error.value)
    open_applicable(prompt, gelu, gelu.weights_sha256).close()  # and accepted on its own build
    other_way = tmp_path / "quick-prompt.safetensors"
    save_checkpoint(other_way, {"ctx": torch.zeros(4, 512)}, quick.base_header("prompt", task="pets", method="coop"))
    with pytest.raises(CftoolError, match=r"quick_gelu=True \(the model in use: False\)"):
        open_applicable(other_way, gelu, gelu.weights_sha256)


def _fake_hub_cache(root, repo_id, filename, weights):
    """huggingface_hub's cache layout for one file of one repository, as a download leaves it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(weights, snapshot / filename)


def test_a_cached_pretrained_tag_loads_with_its_activation_and_never_touches_the_network(vit, tmp_path):
    folder, reference = vit
    hub = tmp_path / "hub"
    state = {name: tensor.contiguous() for name, tensor in torch.load(folder / "open_clip_model.bin").items()}
    _fake_hub_cache(hub, "timm/vit_base_patch16_clip_224.openai", "open_clip_model.safetensors", state)
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path)}
    output = tmp_path / "base.safetensors"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cftool", "export", "--zs", "ViT-B/16", "-o", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 120
    with safe_open(str(output), "pt") as exported:
        metadata = exported.metadata()
        visual_proj = exported.get_tensor("visual.proj")
    assert metadata["cftool.base"] == "ViT-B-16:openai"
    assert json.loads(metadata["cftool.base_arch"])["quick_gelu"] is True
    torch.testing.assert_close(visual_proj, reference.visual.proj.detach())


def test_uncached_weights_fail_in_seconds_when_the_host_does_not_answer(monkeypatch, tmp_path):
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("cftool.zoo.models.cached_tag_weights", lambda cfg: None)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(CftoolError) as error:
        load_model("ViT-B/16")
    message = str(error.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE=1" in message and "local-dir:" in message and "--zs ARCH:/path/to/weights.pt" in message


def test_local_dir_is_accepted_as_open_clip_spells_it(tmp_path):
    from cftool.zoo.base import architecture

    tiny = load_model("tiny")
    folder = tmp_path / "my-model"
    folder.mkdir()
    config = {"model_cfg": architecture("cftool-tiny"), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(dict(tiny.model.state_dict()), folder / "open_clip_model.safetensors")
    local = load_model(f"local-dir:{folder}")
    assert local.weights_sha256 == tiny.weights_sha256
    assert local.architecture == tiny.architecture
    with pytest.raises(CftoolError, match="no such folder"):
        load_model(f"local-dir:{tmp_path / 'missing'}")
    for nameless in ("hf-hub:", "local-dir:"):
        with pytest.raises(CftoolError, match="name the model after the colon"):
            load_model(nameless)


def test_a_model_file_of_a_hub_base_is_rebuilt_offline_from_what_it_records(tmp_path):
    """The hub's config says the architecture and the preprocessing; a `model` file records both, so it evaluates with
    the hub's normalisation where neither the hub nor its cache can be reached."""
    from cftool.zoo.base import architecture

    tiny = load_model("tiny")
    hub = tmp_path / "hub"
    _fake_hub_cache(hub, "me/tiny-clip", "open_clip_model.safetensors", dict(tiny.model.state_dict()))
    config = {"model_cfg": architecture("cftool-tiny"), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (hub / "models--me--tiny-clip" / "snapshots" / ("0" * 40) / "open_clip_config.json").write_text(json.dumps(config))
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path)}

    def cftool(*args, cache):
        result = subprocess.run(
            [sys.executable, "-m", "cftool", *map(str, args)],
            capture_output=True,
            text=True,
            env={**offline, "HF_HUB_CACHE": str(cache)},
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    model_file = tmp_path / "model.safetensors"
    cftool("export", "--zs", "hf-hub:me/tiny-clip", "-o", model_file, cache=hub)
    with safe_open(str(model_file), "pt") as exported:
        recorded = json.loads(exported.metadata()["cftool.base_preprocess"])
    assert recorded["mean"] == [0.5] * 3 and recorded["size"] == [64, 64]  # a ViT's image size is (height, width)

    def accuracy(zs, cache):
        report = json.loads(cftool("eval", "--zs", zs, "--data", "toy:mnist", "--json", cache=cache))
        return report["models"][0]["results"][0]["accuracy"]

    on_the_hub = accuracy("hf-hub:me/tiny-clip", hub)
    assert accuracy(model_file, tmp_path / "no-hub") == on_the_hub
    assert on_the_hub != accuracy("tiny", tmp_path / "no-hub")  # the hub's normalisation, not tiny's, is applied


def _assert_same_state(read: dict, built: dict) -> None:
    assert list(read) == list(built)
    for name, tensor in built.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name


def test_a_tags_weights_are_read_without_building_and_equal_the_built_models(vit, monkeypatch):
    from cftool.zoo.models import parse_model_spec, published_weights

    folder, _ = vit
    monkeypatch.setattr("cftool.zoo.models.cached_tag_weights", lambda cfg: folder / "ViT-B-16.pt")  # OpenAI's fp16
    zoo = load_model("ViT-B-16:openai")
    state, architecture, preprocess = published_weights(parse_model_spec("ViT-B-16:openai"))
    _assert_same_state(state, zoo.model.state_dict())
    assert architecture == zoo.architecture and architecture["quick_gelu"] is True and preprocess is None


def test_delta_reads_a_hub_base_without_building_a_model(cli, tmp_path, monkeypatch):
    """Published weights get open_clip's adjustments (a 1-element logit_scale, a stale position-id buffer), read
    through a storage-less (meta) model, never the built one."""
    from cftool.zoo import models
    from cftool.zoo.base import architecture

    tiny = load_model("tiny")
    published = {name: tensor.half() for name, tensor in tiny.model.state_dict().items()}
    published["logit_scale"] = published["logit_scale"].reshape(1)
    published["text.transformer.embeddings.position_ids"] = torch.arange(8)
    folder = tmp_path / "hub-model"
    folder.mkdir()
    config = {"model_cfg": architecture("cftool-tiny"), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file(published, folder / "open_clip_model.safetensors")
    spec = f"local-dir:{folder}"
    built = load_model(spec)
    model_file = tmp_path / "base.safetensors"
    assert cli("export", "--zs", spec, "-o", model_file).code == 0

    builds, open_clip_devices = [], []
    create_model = open_clip.create_model
    monkeypatch.setattr(models, "_create", lambda *args, **kwargs: builds.append(args))
    monkeypatch.setattr(
        open_clip, "create_model", lambda *a, **kw: open_clip_devices.append(kw.get("device")) or create_model(*a, **kw)
    )
    with open_base(spec) as base:
        _assert_same_state(dict(base), built.model.state_dict())
        assert base.sha256 == built.weights_sha256 and base.preprocess == built.hub_preprocess
        assert base.preprocess["mean"] == [0.5] * 3
    result = cli("delta", model_file, "--zs", spec, "-o", tmp_path / "delta.safetensors")
    assert result.code == 0, result.stderr
    assert builds == [] and set(open_clip_devices) == {"meta"}
    with open_checkpoint(model_file) as exported:
        assert exported.header.base_sha256 == built.weights_sha256


def test_an_architecture_that_cannot_be_built_on_the_meta_device_is_read_through_a_real_build(tmp_path, monkeypatch):
    """timm's towers read values while they initialise, which meta tensors do not have."""
    from cftool.zoo.base import architecture
    from cftool.zoo.models import parse_model_spec, published_weights

    tiny = load_model("tiny")
    folder = tmp_path / "hub-model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": architecture("cftool-tiny")}))
    save_file(dict(tiny.model.state_dict()), folder / "open_clip_model.safetensors")

    def fails_on_meta(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(open_clip, "create_model", fails_on_meta)
    state, _, _ = published_weights(parse_model_spec(f"local-dir:{folder}"))
    _assert_same_state(state, tiny.model.state_dict())
