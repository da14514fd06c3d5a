"""Fuzzing what users type and the files they hand-edit: the option validators, CoOp's split files and LoRA configs
either accept their input or refuse it with the tool's one-line error; nothing else escapes."""

import json
import math
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cftool.data import DatasetSpec, load_task
from cftool.errors import CftoolError
from cftool.io.header import TensorInfo
from cftool.merge.lora import lora_config
from cftool.train.loop import TrainOptions

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers = st.one_of(st.none(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def refused_in_one_line(build) -> None:
    try:
        build()
    except CftoolError as err:
        assert "\n" not in str(err)


@FUZZ
@given(
    iterations=st.one_of(st.none(), st.integers(-5, 10**9)),
    epochs=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    batch_size=st.integers(-5, 10**6),
    warmup=st.integers(-5, 10**6),
    lr=st.floats(allow_nan=True, allow_infinity=True),
    weight_decay=st.floats(allow_nan=True, allow_infinity=True),
    label_smoothing=st.floats(allow_nan=True, allow_infinity=True),
    seed=st.integers(-(2**70), 2**70),
    optimizer=st.sampled_from(["sgd", "adamw", "adam", ""]) | st.text(max_size=5),
    precision=st.sampled_from(["auto", "fp32", "bf16", "fp16", "fp8"]),
    augment=st.sampled_from(["none", "coop", "zscl", "flip"]),
)
def test_training_options_are_accepted_or_refused_in_one_line(**options):
    def build():
        built = TrainOptions(**options)
        assert math.isfinite(built.lr) and built.lr > 0 and built.weight_decay >= 0
        assert built.batch_size >= 1 and built.warmup >= 0
        assert 0 <= built.label_smoothing < 1

    refused_in_one_line(build)


@FUZZ
@given(
    classes=st.text(max_size=6) | st.sampled_from(["all", "base", "novel"]),
    shots=numbers,
    seed=st.integers(-(2**70), 2**70),
)
def test_dataset_specs_are_accepted_or_refused_in_one_line(classes, shots, seed):
    if isinstance(shots, float):
        shots = None if math.isnan(shots) or math.isinf(shots) else int(shots)
    refused_in_one_line(lambda: DatasetSpec("toy:food", classes=classes, shots=shots, seed=seed))


@FUZZ
@given(content=json_values | st.text(max_size=30) | st.just("[" * 50_000))
def test_coop_split_files_are_read_or_refused_in_one_line(tmp_path_factory, content):
    root = tmp_path_factory.mktemp("pets")
    dataset = root / "oxford_pets"
    (dataset / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4), "red").save(dataset / "images" / "a.jpg")
    text = content if isinstance(content, str) else json.dumps(content)
    (dataset / "split_zhou_OxfordPets.json").write_text(text)

    def read():
        task = load_task("coop:OxfordPets", data_root=root)
        for split in ("train", "val", "test"):
            for image, _ in task.split(split):
                assert image.size == (4, 4)

    refused_in_one_line(read)


@FUZZ
@given(
    config=st.dictionaries(st.sampled_from(["rank", "alpha", "targets", "other"]), json_values, max_size=4),
    rank_a=st.integers(0, 4),
    rank_b=st.integers(0, 4),
)
def test_lora_configs_are_read_or_refused_in_one_line(config, rank_a, rank_b):
    tensors = {
        "w.lora_A": TensorInfo("w.lora_A", "F32", (rank_a, 8)),
        "w.lora_B": TensorInfo("w.lora_B", "F32", (8, rank_b)),
    }
    ckpt = SimpleNamespace(path="lora.safetensors", header=SimpleNamespace(config=config), tensors=tensors)
    refused_in_one_line(lambda: lora_config(ckpt))
