import json
import math
import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_about, files_in
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cftool.errors import CftoolError
from cftool.io.checkpoint import (
    CheckpointWriter,
    Header,
    TensorInfo,
    check_shapes,
    open_checkpoint,
    save_checkpoint,
    tensors_sha256,
)
from cftool.io.header import DTYPE_BITS, KINDS, read_header
from cftool.io.outputs import atomic_output

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "visual.proj": torch.randn(6, 4, generator=generator),
        "f16": torch.randn(3, 5, generator=generator).half(),
        "bf16": torch.randn(7, generator=generator).bfloat16(),
        "i64": torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "mask": torch.tensor([[True, False, True], [False, False, True]]),
        "transposed": torch.randn(4, 3, generator=generator).t(),  # not contiguous
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


def sample_header(kind: str = "prompt") -> Header:
    return Header(
        kind=kind,
        base="ViT-B-16:openai",
        base_sha256="ab" * 32,
        task="dtd",
        classnames=["banded", "blotchy", "crème brûlée"],
        template="a photo of a {}.",
        method="coop",
        config={"lr": 0.002, "epochs": 5, "nested": {"ctx": 16}},
        extra={"note": "made in a test", "other.tool": "x"},
    )


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert actual[name].shape == tensor.shape, name
        assert torch.equal(actual[name], tensor), name


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_every_kind_keeps_header_and_tensors(tmp_path, kind):
    tensors = sample_tensors()
    path = save_checkpoint(tmp_path / f"{kind}.safetensors", tensors, sample_header(kind))

    with open_checkpoint(path, kind=kind) as reader:
        assert reader.header == sample_header(kind)
        assert list(reader) == list(tensors)
        assert len(reader) == len(tensors) and "mask" in reader and "nope" not in reader
        assert reader.tensors["bf16"] == TensorInfo("bf16", "BF16", (7,))
        assert_same_tensors(reader.load_all(), tensors)


def test_written_files_follow_the_safetensors_spec(tmp_path):
    tensors = sample_tensors()
    path = save_checkpoint(tmp_path / "a.safetensors", tensors, sample_header())

    assert_same_tensors(load_file(path), tensors)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == sample_header().to_metadata()
    raw = path.read_bytes()
    header_length = struct.unpack("<Q", raw[:8])[0]
    assert (8 + header_length) % 8 == 0
    assert raw[8 : 8 + header_length].decode().endswith(("}", " "))


def test_files_written_by_safetensors_are_read(tmp_path):
    tensors = {"a": torch.randn(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    path = tmp_path / "plain.safetensors"
    save_file(tensors, path, metadata={"k": "v"})

    found, metadata = read_header(path)
    assert metadata == {"k": "v"}
    assert found == {"a": TensorInfo("a", "F32", (2, 3)), "b": TensorInfo("b", "BF16", (4,))}
    assert found["a"].numel == 6 and found["a"].nbytes == 24 and found["b"].torch_dtype == torch.bfloat16


def test_writer_accepts_any_order_and_streams_into_place(tmp_path):
    tensors = sample_tensors()
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    path = tmp_path / "deep" / "new" / "folder" / "out.safetensors"
    with CheckpointWriter(path, layout, sample_header()) as writer:
        for name in reversed(list(tensors)):
            writer.write(name, tensors[name])

    assert_same_tensors(load_file(path), tensors)
    assert files_in(path.parent) == ["out.safetensors"]


def test_written_file_mode_follows_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", {"a": torch.ones(1)}, sample_header())
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_writer_rejects_tensors_that_do_not_match_the_layout(tmp_path):
    path = tmp_path / "out.safetensors"
    layout = {"a": (torch.float32, (2, 2))}
    with pytest.raises(ValueError, match="layout"):
        with CheckpointWriter(path, layout, sample_header()) as writer:
            writer.write("a", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="never written"):
        with CheckpointWriter(path, layout, sample_header()):
            pass
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("interruption", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_write_leaves_no_target_and_no_temp_file(tmp_path, interruption):
    tensors = sample_tensors()
    layout = {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}
    path = tmp_path / "out.safetensors"

    with pytest.raises(type(interruption)):
        with CheckpointWriter(path, layout, sample_header()) as writer:
            writer.write("visual.proj", tensors["visual.proj"])
            assert len(files_in(tmp_path)) == 1  # the temp file exists mid-write
            raise interruption

    assert files_in(tmp_path) == []


def test_interrupted_overwrite_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "out.safetensors", {"old": torch.ones(3)}, sample_header())
    before = path.read_bytes()

    with pytest.raises(KeyboardInterrupt):
        with CheckpointWriter(path, {"new": (torch.float32, (2,))}, sample_header(), overwrite=True):
            raise KeyboardInterrupt

    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["out.safetensors"]


def test_existing_target_is_refused_unless_overwrite(tmp_path):
    path = save_checkpoint(tmp_path / "out.safetensors", {"old": torch.ones(3)}, sample_header())
    before = path.read_bytes()

    with pytest.raises(CftoolError) as error:
        save_checkpoint(path, {"new": torch.zeros(2)}, sample_header())
    assert str(error.value) == f"{path} exists; pass --force to overwrite"
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["out.safetensors"]

    save_checkpoint(path, {"new": torch.zeros(2)}, sample_header(), overwrite=True)
    assert_same_tensors(load_file(path), {"new": torch.zeros(2)})
    assert files_in(tmp_path) == ["out.safetensors"]


def test_header_none_writes_a_plain_safetensors_file(tmp_path):
    path = save_checkpoint(tmp_path / "plain.safetensors", {"a": torch.ones(2)}, None)
    assert read_header(path) == ({"a": TensorInfo("a", "F32", (2,))}, {})
    with pytest.raises(CftoolError, match="not a cftool checkpoint"):
        open_checkpoint(path)


def test_atomic_output_publishes_only_complete_files(tmp_path):
    path = tmp_path / "sub" / "weights.pt"
    with atomic_output(path) as temp:
        assert temp.parent == path.parent and temp.name.startswith(".weights.pt.tmp-")
        torch.save({"a": torch.ones(2)}, temp)
        assert not path.exists()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))

    with pytest.raises(CftoolError, match="exists; pass --force"):
        with atomic_output(path):
            pass
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(path, overwrite=True) as temp:
            temp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert files_in(path.parent) == ["weights.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))


def test_a_folder_is_not_a_valid_output(tmp_path):
    with pytest.raises(CftoolError, match="is a folder"):
        save_checkpoint(tmp_path, {"a": torch.ones(1)}, sample_header(), overwrite=True)


def valid_file_bytes(tmp_path: Path) -> bytes:
    return save_checkpoint(tmp_path / "valid.safetensors", sample_tensors(), sample_header()).read_bytes()


def header_file(tmp_path: Path, header: bytes, data: bytes = b"", name: str = "bad.safetensors") -> Path:
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_truncated_file_is_reported_with_sizes(tmp_path):
    raw = valid_file_bytes(tmp_path)
    path = tmp_path / "cut.safetensors"
    path.write_bytes(raw[:-10])
    with pytest.raises(CftoolError) as error:
        open_checkpoint(path)
    assert_one_line_about(error, path, "truncated: header says", "file has")


def test_trailing_bytes_are_reported(tmp_path):
    path = tmp_path / "long.safetensors"
    path.write_bytes(valid_file_bytes(tmp_path) + b"\0" * 3)
    with pytest.raises(CftoolError) as error:
        read_header(path)
    assert_one_line_about(error, path, "3 unexpected bytes")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "too short"),
        (b"hello world, this is text\n", "exceeds file size"),
        (struct.pack("<Q", 2**63) + b"{}", "exceeds file size"),
        (struct.pack("<Q", 9) + b'{"a": 1,}', "not valid JSON"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not UTF-8"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 13) + b'{"a": NaN}   ', "not valid JSON"),
        (struct.pack("<Q", 5000) + b"{" + b'"a":' * 1 + b"[" * 4994 + b"]", "not valid JSON"),
    ],
)
def test_garbage_is_not_a_safetensors_file(tmp_path, content, fragment):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(CftoolError) as error:
        read_header(path)
    assert_one_line_about(error, path, fragment)


@pytest.mark.parametrize(
    ("entries", "data", "fragment"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None),
        ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, "shape of tensor 'a'"),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "shape of tensor 'a'"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "shape of tensor 'a'"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "has no data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "data offsets span 4"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "end before they begin"),
        ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"\0" * 3, "leaves a gap"),
        (
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
            },
            b"\0" * 4,
            "overlaps the previous tensor",
        ),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__ must map strings to strings"),
        ({"a": "not an entry"}, b"", "not a JSON object"),
        ({"a": {"dtype": "F6_E2M3", "shape": [3], "data_offsets": [0, 2]}}, b"\0" * 2, "invalid for F6_E2M3"),
    ],
)
def test_header_fields_are_validated(tmp_path, entries, data, fragment):
    path = header_file(tmp_path, json.dumps(entries).encode(), data)
    if fragment is None:
        assert read_header(path)[0] == {"a": TensorInfo("a", "F32", (2,))}
        return
    with pytest.raises(CftoolError) as error:
        read_header(path)
    assert_one_line_about(error, path, fragment)


def test_duplicate_names_are_refused(tmp_path):
    entry = '{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    path = header_file(tmp_path, f'{{"a": {entry}, "a": {entry}}}'.encode(), b"\0")
    with pytest.raises(CftoolError, match="duplicate key 'a'"):
        read_header(path)


def test_missing_file_and_folder_are_reported(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(CftoolError) as error:
        open_checkpoint(missing)
    assert_one_line_about(error, missing, "no such file")
    with pytest.raises(CftoolError) as error:
        open_checkpoint(tmp_path)
    assert_one_line_about(error, tmp_path, "is a folder")


def test_plain_safetensors_is_not_a_cftool_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.ones(2)}, path)
    with pytest.raises(CftoolError) as error:
        open_checkpoint(path)
    assert str(error.value) == (
        f"{path}: not a cftool checkpoint (no cftool.format in metadata); convert it with `cftool import`"
    )


def test_kind_mismatch_names_both_kinds(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"a": torch.ones(2)}, sample_header("model"))
    with pytest.raises(CftoolError) as error:
        open_checkpoint(path, kind="prompt")
    assert str(error.value) == f"{path}: expected a 'prompt' checkpoint, found 'model'"
    with pytest.raises(CftoolError, match="expected a 'delta' or 'lora' checkpoint, found 'model'"):
        open_checkpoint(path, kind=("delta", "lora"))
    open_checkpoint(path, kind=("model", "delta")).close()


def test_base_mismatch_names_both_hashes_and_specs(tmp_path):
    path = save_checkpoint(tmp_path / "p.safetensors", {"ctx": torch.ones(2, 4)}, sample_header())
    other = "cd" * 32
    with pytest.raises(CftoolError) as error:
        open_checkpoint(path, base_sha256=other, base="tiny")
    assert_one_line_about(error, path, "ab" * 6, "cd" * 6, "'ViT-B-16:openai'", "'tiny'")
    open_checkpoint(path, base_sha256="ab" * 32).close()

    unhashed = save_checkpoint(tmp_path / "u.safetensors", {"a": torch.ones(1)}, Header(kind="head", base="tiny"))
    open_checkpoint(unhashed, base_sha256=other).close()  # nothing recorded, nothing to compare


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"cftool.format": "2", "cftool.kind": "model", "cftool.base": "tiny"}, "format '2' is not supported"),
        ({"cftool.format": "1", "cftool.base": "tiny"}, "no cftool.kind"),
        ({"cftool.format": "1", "cftool.kind": "banana", "cftool.base": "tiny"}, "unknown checkpoint kind 'banana'"),
        ({"cftool.format": "1", "cftool.kind": "model"}, "no cftool.base"),
        (
            {"cftool.format": "1", "cftool.kind": "head", "cftool.base": "tiny", "cftool.classnames": "[oops"},
            "cftool.classnames is not valid JSON",
        ),
        (
            {"cftool.format": "1", "cftool.kind": "head", "cftool.base": "tiny", "cftool.classnames": '{"a": 1}'},
            "not a JSON list of strings",
        ),
        (
            {"cftool.format": "1", "cftool.kind": "head", "cftool.base": "tiny", "cftool.config": "[1, 2]"},
            "cftool.config is not a JSON object",
        ),
    ],
)
def test_bad_cftool_metadata_is_reported(tmp_path, metadata, fragment):
    path = tmp_path / "bad.safetensors"
    save_file({"a": torch.ones(1)}, path, metadata=metadata)
    with pytest.raises(CftoolError) as error:
        open_checkpoint(path)
    assert_one_line_about(error, path, fragment)


def test_header_extra_may_not_override_cftool_keys():
    with pytest.raises(ValueError, match="cftool.kind"):
        Header(kind="model", base="tiny", extra={"cftool.kind": "prompt"}).to_metadata()
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        Header(kind="banana", base="tiny").to_metadata()


def test_one_tensor_is_read_lazily_through_a_slice(tmp_path):
    tensors = {f"layer{i}": torch.arange(40.0).reshape(8, 5) + i for i in range(5)}
    path = save_checkpoint(tmp_path / "big.safetensors", tensors, sample_header("delta"))
    with open_checkpoint(path) as reader:
        part = reader.get_slice("layer3")
        assert part.get_shape() == [8, 5]
        assert torch.equal(part[2:4], tensors["layer3"][2:4])
        layer1 = reader["layer1"]
        with pytest.raises(CftoolError, match="has no tensor 'layer9'"):
            reader["layer9"]
    assert torch.equal(layer1, tensors["layer1"])  # tensors outlive the reader


def resident_mb() -> float:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_streaming_reads_do_not_accumulate_resident_memory(tmp_path):
    tensors = {f"layer{i}": torch.full((1024, 1024), float(i)) for i in range(8)}  # 8 x 4 MB
    path = save_checkpoint(tmp_path / "big.safetensors", tensors, sample_header("delta"))
    del tensors

    with open_checkpoint(path) as reader:
        before = resident_mb()
        for i, name in enumerate(reader):
            tensor = reader[name]
            assert tensor.sum().item() == i * tensor.numel()  # touches every page
            del tensor
        growth = resident_mb() - before
    # A memory-mapped reader would keep all 32 MB resident until closed.
    assert growth < 16, f"resident memory grew by {growth:.1f} MB"


def test_check_shapes_reports_offenders_and_counts(tmp_path):
    expected = {"a": (2, 3), "b": (4,), "c": (1,), "d": (5, 5)}
    found = {"a": TensorInfo("a", "F32", (3, 2)), "b": TensorInfo("b", "F32", (4,)), "x": TensorInfo("x", "F32", (1,))}
    with pytest.raises(CftoolError) as error:
        check_shapes("f.safetensors", found, expected)
    message = str(error.value)
    assert message.startswith("f.safetensors: ")
    assert "2 missing ('c', 'd')" in message
    assert "1 unexpected ('x')" in message
    assert "1 with the wrong shape ('a': expected [2, 3], found [3, 2])" in message

    check_shapes("f.safetensors", {"a": (2, 3), "b": [4]}, {"a": (2, 3), "b": (4,)})
    many = {f"t{i}": (i,) for i in range(10)}
    with pytest.raises(CftoolError, match=r"10 missing \('t0', 't1', 't2', \.\.\.\)"):
        check_shapes("f.safetensors", {}, many)


def test_tensors_sha256_ignores_storage_but_not_content(tmp_path):
    tensors = sample_tensors()
    digest = tensors_sha256(tensors)

    reordered = {name: tensors[name].contiguous().clone() for name in reversed(list(tensors))}
    assert tensors_sha256(reordered) == digest
    path = save_checkpoint(tmp_path / "h.safetensors", tensors, sample_header())
    with open_checkpoint(path) as reader:
        assert tensors_sha256(reader) == digest

    changed = dict(tensors, i64=tensors["i64"].clone())
    changed["i64"][1, 2] += 1
    assert tensors_sha256(changed) != digest
    assert tensors_sha256(dict(tensors, u8=tensors["u8"].to(torch.int8))) != digest
    renamed = dict(tensors)
    renamed["other"] = renamed.pop("scalar")
    assert tensors_sha256(renamed) != digest


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def read_header_or_cftool_error(path: Path) -> tuple | None:
    try:
        return read_header(path)
    except CftoolError as error:
        assert "\n" not in str(error)
        assert str(path) in str(error)
        return None


@FUZZ
@given(content=st.binary(max_size=200))
def test_fuzz_random_bytes_give_a_result_or_cftool_error(fuzz_folder, content):
    path = fuzz_folder / "random.safetensors"
    path.write_bytes(content)
    read_header_or_cftool_error(path)


@FUZZ
@given(body=st.binary(max_size=200), data=st.binary(max_size=16))
def test_fuzz_random_headers_of_the_right_length(fuzz_folder, body, data):
    path = header_file(fuzz_folder, b"{" + body, data, name="random-header.safetensors")
    read_header_or_cftool_error(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**65) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def nearly_valid_headers(draw) -> tuple[dict, int]:
    """A well-formed header and data size, then up to two fields spoiled, to reach every check."""
    entries: dict = {}
    offset = 0
    for name in draw(st.lists(st.text(max_size=3), max_size=3, unique=True)):
        dtype = draw(st.sampled_from(["F32", "U8", "BF16", "BOOL", "I64", "F4", "F6_E3M2"]))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = math.prod(shape) * DTYPE_BITS[dtype] // 8
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if draw(st.booleans()):
        entries["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    for _ in range(draw(st.integers(0, 2))):
        if not entries:
            break
        victim = entries[draw(st.sampled_from(sorted(entries)))]
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "k"]))
        if draw(st.booleans()) and field in victim:
            del victim[field]
        else:
            victim[field] = draw(json_values)
    return entries, offset + draw(st.sampled_from([0, 0, 0, -1, 1, 5]))


@FUZZ
@given(header=nearly_valid_headers())
def test_fuzz_structured_headers_agree_with_safetensors(fuzz_folder, header):
    entries, data_size = header
    data = b"\0" * max(data_size, 0)
    path = header_file(fuzz_folder, json.dumps(entries).encode(), data, name="structured.safetensors")
    result = read_header_or_cftool_error(path)
    if result is not None:
        with safe_open(str(path), framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(result[0])
            assert (handle.metadata() or {}) == result[1]


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    return valid_file_bytes(tmp_path_factory.mktemp("valid"))


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 40),
)
def test_fuzz_mutated_valid_files(fuzz_folder, valid_bytes, flips, cut):
    content = bytearray(valid_bytes)
    for position, value in flips:
        content[position % len(content)] = value
    path = fuzz_folder / "mutated.safetensors"
    path.write_bytes(bytes(content[: len(content) - cut]))
    result = read_header_or_cftool_error(path)
    if result is not None:
        # Whatever our parser accepts, the safetensors library must accept too.
        with safe_open(str(path), framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(result[0])
            assert (handle.metadata() or {}) == result[1]
