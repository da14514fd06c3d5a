"""`--zs` specs and loading through open_clip, without touching the network."""

import os
import subprocess
import sys

import pytest
import torch

from cftool.errors import CftoolError
from cftool.zoo import load_model, parse_model_spec


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("tiny", "tiny"),
        ("ViT-B/16", "ViT-B-16:openai"),
        ("ViT-B-16", "ViT-B-16:openai"),
        ("ViT-B-16:laion2b_s34b_b88k", "ViT-B-16:laion2b_s34b_b88k"),
        ("ViT-L/14:openai", "ViT-L-14:openai"),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ],
)
def test_specs_parse_to_canonical_names(spec, canonical):
    assert parse_model_spec(spec).canonical == canonical


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ViT-Q/99", "unknown model 'ViT-Q/99'"),
        ("ViT-B-16:no_such_tag", "no pretrained tag 'no_such_tag'.*laion2b_s34b_b88k"),
        ("ViT-B-16:/nonexistent/w.pt", "does not exist"),
        ("", "--zs is empty"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(CftoolError, match=message) as info:
        parse_model_spec(spec)
    assert "\n" not in str(info.value)


def test_tiny_is_an_open_clip_model_with_its_own_transform_and_tokenizer(tiny):
    from PIL import Image

    image = tiny.preprocess(Image.new("RGB", (100, 80), (255, 0, 0)))
    assert image.shape == (3, 64, 64)
    assert tiny.tokenizer(["a red circle"]).shape == (1, 32)
    with torch.no_grad():
        features = tiny.model.encode_image(image[None], normalize=True)
    assert features.shape == (1, 128)
    assert torch.allclose(features.norm(dim=-1), torch.ones(1))


def test_weights_hash_is_stable_and_tracks_the_weights(tiny):
    again = load_model("tiny")
    assert tiny.weights_sha256 == again.weights_sha256
    state = again.model.state_dict()
    state["logit_scale"] = state["logit_scale"] + 1
    again.load_state_dict(state, "test")
    assert again.weights_sha256 != tiny.weights_sha256


def test_architecture_with_local_weights_file(tiny, tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), weights)
    loaded = load_model(f"cftool-tiny:{weights}")
    assert loaded.weights_sha256 == tiny.weights_sha256


def test_a_cftool_model_file_is_a_spec(tiny, tmp_path):
    from cftool.kinds.convert import export_base
    from cftool.zoo.base_weights import open_base

    with open_base("tiny") as base:
        path = export_base(base, tmp_path / "base.safetensors", overwrite=False)
    spec = parse_model_spec(str(path))
    assert spec.arch == "cftool-tiny"
    assert load_model(spec).weights_sha256 == tiny.weights_sha256


def test_uncached_weights_offline_give_the_promised_one_line_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "cftool", "eval", "--zs", "ViT-B/16", "--benchmark", "mtil-tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not in the local cache" in lines[0]
    assert "--zs tiny" in lines[0] and "--zs ARCH:/path/to/weights.pt" in lines[0]
    assert "Traceback" not in result.stderr
