"""The merge methods of docs/design.md §5.2 on hand-built tensors, the exact streamed selection, and the streaming
engine against in-memory references written here from the definitions."""

import math

import pytest
import torch

from cftool.io.bitpack import count_set_bits, pack_bits
from cftool.io.checkpoint import CheckpointWriter, Header, open_checkpoint, save_checkpoint
from cftool.io.unified import TaskEntry, open_unified
from cftool.merge.engine import DeltaFile, LoadedDelta, continual_inputs, unify
from cftool.merge.methods import get_method, uniform_draws
from cftool.merge.registry import METHODS
from cftool.merge.select import RadixSelect
from cftool.merge.stream import plan_tensors


def tasks_of(*deltas, dtype=torch.float32):
    """LoadedDelta inputs from dicts of tensors (lists become tensors of ``dtype``)."""
    return [
        LoadedDelta({n: torch.as_tensor(v, dtype=dtype) for n, v in d.items()}, TaskEntry(f"t{i}"))
        for i, d in enumerate(deltas)
    ]


def run(inputs, method, path, chunk_elements=None, **options):
    merge = get_method(method)
    return unify(inputs, merge, merge.make_options(**options), path, chunk_elements=chunk_elements)


def read_all(path):
    with open_checkpoint(path) as ckpt:
        return ckpt.load_all(), ckpt.header


def experts(path):
    """Every task's expert λ_i · M_i ⊙ u as decouple rebuilds it, by tensor."""
    from cftool.merge.decouple import expert_rows

    with open_unified(path) as unified:
        rows = {name: info.shape[0] if info.shape else 1 for name, info in unified.delta.items()}
        result = [
            {name: expert_rows(unified, index, name, 0, n) for name, n in rows.items()}
            for index in range(len(unified.tasks))
        ]
        return result, unified.rescalers.clone()


def masks_and_u(path):
    with open_unified(path) as unified:
        rows = {name: info.shape[0] if info.shape else 1 for name, info in unified.delta.items()}
        u = {name: unified.unified_rows(name, 0, n).clone() for name, n in rows.items()}
        tasks = range(len(unified.tasks))
        masks = [{name: unified.mask_rows(i, name, 0, n) for name, n in rows.items()} for i in tasks]
        return u, masks, unified.rescalers.clone()


# ConDU -------------------------------------------------------------------------------------------------------


def test_condu_counts_a_zero_sign_sum_as_negative(tmp_path):
    # entry 0 sums to 0 (s = −1: only the negative entry is kept); entry 1 sums to +1; entry 2 is 0 everywhere
    run(tasks_of({"w": [1.0, 2.0, 0.0]}, {"w": [-1.0, -1.0, 0.0]}), "condu", tmp_path / "u.st")
    u, masks, rescalers = masks_and_u(tmp_path / "u.st")
    assert u["w"].tolist() == [-1.0, 2.0, -0.0]
    assert masks[0]["w"].tolist() == [False, True, False]
    assert masks[1]["w"].tolist() == [True, False, False]
    # λ_i = mean|δ_i| / mean|M_i ⊙ u|: (3/3)/(2/3) and (2/3)/(1/3)
    assert rescalers.tolist() == pytest.approx([1.5, 2.0])


def test_condu_with_ties_in_magnitude_keeps_that_magnitude(tmp_path):
    run(tasks_of({"w": [2.0, -3.0]}, {"w": [2.0, 3.0]}, {"w": [1.0, -3.0]}), "condu", tmp_path / "u.st")
    u, masks, _ = masks_and_u(tmp_path / "u.st")
    assert u["w"].tolist() == [2.0, -3.0]
    assert [m["w"].tolist() for m in masks] == [[True, True], [True, False], [True, True]]


def test_condu_all_zero_delta_and_0d_tensors(tmp_path):
    inputs = tasks_of(
        {"scale": 0.5, "w": [[1.0, -2.0], [3.0, 0.0]]},
        {"scale": 0.0, "w": [[0.0, 0.0], [0.0, 0.0]]},  # a task that changed nothing
        {"scale": -0.25, "w": [[2.0, 1.0], [-1.0, 0.0]]},
    )
    result = run(inputs, "condu", tmp_path / "u.st")
    u, masks, rescalers = masks_and_u(tmp_path / "u.st")
    assert u["scale"].shape == () and u["scale"].item() == 0.5
    assert u["w"].tolist() == [[2.0, -2.0], [3.0, -0.0]]
    assert not masks[1]["w"].any() and not masks[1]["scale"]
    assert rescalers[1] == 0  # an empty mask everywhere: the expert is the base, not 0/0
    assert result.mask_density[1] == 0
    expert, _ = experts(tmp_path / "u.st")
    assert not expert[1]["w"].any() and expert[1]["scale"] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_condu_keeps_half_precision_inputs_exact(tmp_path, dtype):
    values = [[0.1, -0.2, 0.3, 65504.0 if dtype == torch.float16 else 1e30], [-0.3, 0.2, 0.1, 1.0]]
    inputs = tasks_of({"w": values[0]}, {"w": values[1]}, dtype=dtype)
    run(inputs, "condu", tmp_path / "u.st")
    u, _, _ = masks_and_u(tmp_path / "u.st")
    assert u["w"].dtype == dtype
    a, b = (torch.tensor(v, dtype=dtype) for v in values)
    expected = torch.where(a.float() + b.float() > 0, torch.maximum(a.abs(), b.abs()), -torch.maximum(a.abs(), b.abs()))
    assert torch.equal(u["w"], expected)


def reference_condu(deltas):
    """docs/design.md §5.2 on whole tensors, as written there (what EMR-Merging's and ConDU's code compute)."""
    names = list(deltas[0])
    unified, masks = {}, [{} for _ in deltas]
    numerator = torch.zeros(len(deltas), dtype=torch.float64)
    denominator = torch.zeros(len(deltas), dtype=torch.float64)
    for name in names:
        values = [d[name].float() for d in deltas]
        sign = torch.where(sum(values) > 0, 1.0, -1.0)
        magnitude = torch.zeros_like(values[0])
        for i, value in enumerate(values):
            masks[i][name] = value * sign > 0
            magnitude = torch.maximum(magnitude, (value * masks[i][name]).abs())
        unified[name] = sign * magnitude
        for i, value in enumerate(values):
            numerator[i] += value.abs().double().mean()
            denominator[i] += (unified[name] * masks[i][name]).abs().double().mean()
    rescalers = (numerator / denominator).float()
    expert = [{n: rescalers[i] * masks[i][n] * unified[n] for n in names} for i in range(len(deltas))]
    return unified, masks, rescalers, expert


def random_deltas(n, shapes, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [
        {name: torch.randn(shape, generator=generator).to(dtype) for name, shape in shapes.items()} for _ in range(n)
    ]


SHAPES = {"conv": (8, 3, 3, 3), "token": (37, 13), "bias": (21,), "scale": (), "odd": (5, 7)}


def test_condu_equals_the_definition_on_random_deltas(tmp_path):
    deltas = random_deltas(5, SHAPES)
    run([LoadedDelta(d, TaskEntry(f"t{i}")) for i, d in enumerate(deltas)], "condu", tmp_path / "u.st", 64)
    unified, masks, rescalers, expert = reference_condu(deltas)
    u, got_masks, got_rescalers = masks_and_u(tmp_path / "u.st")
    for name in SHAPES:
        assert torch.equal(u[name], unified[name])
        for i in range(5):
            assert torch.equal(got_masks[i][name], masks[i][name])
    assert torch.allclose(got_rescalers, rescalers, rtol=1e-6)
    got_expert, _ = experts(tmp_path / "u.st")
    for i in range(5):
        for name in SHAPES:
            assert torch.allclose(got_expert[i][name], expert[i][name], rtol=1e-6, atol=0)


# TIES --------------------------------------------------------------------------------------------------------


def test_ties_keeps_ties_at_the_global_threshold(tmp_path):
    # d = 10, keep 0.2: τ is the ⌊2⌋ + 1 = 3rd largest |δ| (= 1 for the first task); all four 1s are kept
    first = {"a": [5.0, 1.0, -1.0, 0.5, 0.25], "b": [1.0, -1.0, 0.0, 0.1, 4.0]}
    second = {"a": [0.0] * 5, "b": [0.0] * 5}
    run(tasks_of(first, second), "ties", tmp_path / "t.safetensors")
    merged, header = read_all(tmp_path / "t.safetensors")
    assert header.kind == "delta" and header.method == "ties"
    assert merged["a"].tolist() == [5.0, 1.0, -1.0, 0.0, 0.0]
    assert merged["b"].tolist() == [1.0, -1.0, 0.0, 0.0, 4.0]


def test_ties_elects_signs_and_takes_the_disjoint_mean(tmp_path):
    inputs = tasks_of({"w": [3.0, 2.0, -1.0, 4.0]}, {"w": [-1.0, 2.0, -3.0, 4.0]}, {"w": [1.0, -2.0, 0.0, 1.0]})
    run(inputs, "ties", tmp_path / "t.safetensors", keep=1.0, scale=0.5)
    merged, _ = read_all(tmp_path / "t.safetensors")
    # sums 3, 2, −4, 9: means of the agreeing entries (3+1)/2, (2+2)/2, (−1−3)/2, (4+4+1)/3, times λ = 0.5
    assert merged["w"].tolist() == pytest.approx([1.0, 1.0, -1.0, 1.5])


@pytest.mark.parametrize(
    "first, second, expected",
    [
        # entry 0 sums to 0: the majority of the elected signs (+1, +1 from entries 1 and 2) decides: +1 → 2
        ([2.0, 1.0, 1.0], [-2.0, 1.0, 1.0], [2.0, 1.0, 1.0]),
        # majority −1 (entries 1 and 2): entry 0 takes the negative entry
        ([2.0, -1.0, -1.0], [-3.0, -1.0, -1.0], [-3.0, -1.0, -1.0]),
        # every sum is 0, so is the majority: s = 0 keeps the negative entries, as the reference code does
        ([2.0, -1.0], [-2.0, 1.0], [-2.0, -1.0]),
    ],
)
def test_ties_zero_sign_takes_the_majority_sign(tmp_path, first, second, expected):
    run(tasks_of({"w": first}, {"w": second}), "ties", tmp_path / "t.safetensors", keep=1.0)
    assert read_all(tmp_path / "t.safetensors")[0]["w"].tolist() == expected


def test_ties_per_tensor_trims_each_tensor_with_mergekit_counts(tmp_path):
    # keep 0.5: k = ⌊4·0.5⌋ = 2 in "w" (ties at the 2nd largest kept), max(1, ⌊1·0.5⌋) = 1 in the 0-d "s"
    inputs = tasks_of({"w": [4.0, -3.0, 3.0, 1.0], "s": 0.5}, {"w": [0.0, 0.0, 0.0, 0.0], "s": 0.0})
    run(inputs, "ties", tmp_path / "t.safetensors", keep=0.5, trim="per-tensor")
    merged, _ = read_all(tmp_path / "t.safetensors")
    assert merged["w"].tolist() == [4.0, -3.0, 3.0, 0.0]
    assert merged["s"].item() == 0.5


def reference_ties(deltas, keep=0.2, scale=1.0):
    """TIES as the paper's code and FusionBench write it: on the stacked, whole flattened task vectors."""
    flat = torch.stack([torch.cat([d[n].float().reshape(-1) for n in d]) for d in deltas])
    d = flat.shape[1]
    kth, _ = flat.abs().kthvalue(d - int(d * keep), dim=1, keepdim=True)
    trimmed = flat * (flat.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    selected = trimmed * torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    merged = scale * selected.sum(0) / (selected != 0).sum(0).float().clamp(min=1)
    out, offset = {}, 0
    for name, tensor in deltas[0].items():
        out[name] = merged[offset : offset + tensor.numel()].reshape(tensor.shape)
        offset += tensor.numel()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ties_equals_the_reference_code_streamed_in_slices(tmp_path, dtype):
    deltas = random_deltas(4, SHAPES, seed=1, dtype=dtype)
    for d in deltas:  # repeated magnitudes, so that the threshold has ties
        d["token"][:5] = d["token"][5:10].abs()
    run([LoadedDelta(d, TaskEntry(f"t{i}")) for i, d in enumerate(deltas)], "ties", tmp_path / "t.st", 50)
    merged, _ = read_all(tmp_path / "t.st")
    expected = reference_ties(deltas)
    for name in SHAPES:
        assert merged[name].dtype == dtype
        assert torch.allclose(merged[name].float(), expected[name].to(dtype).float(), rtol=1e-6, atol=0), name


# Task arithmetic, DARE, DARE-TIES, mean ----------------------------------------------------------------------


def test_task_arithmetic_and_mean(tmp_path):
    inputs = tasks_of({"w": [1.0, 2.0], "s": 1.0}, {"w": [3.0, -4.0], "s": 3.0})
    run(inputs, "task-arithmetic", tmp_path / "ta.st", scale=0.5)
    assert read_all(tmp_path / "ta.st")[0]["w"].tolist() == [2.0, -1.0]
    run(inputs, "task-arithmetic", tmp_path / "ta-default.st")
    assert read_all(tmp_path / "ta-default.st")[0]["s"].item() == pytest.approx(0.3 * 4)
    run(inputs, "mean", tmp_path / "mean.st")
    merged, _ = read_all(tmp_path / "mean.st")
    assert merged["w"].tolist() == [2.0, -1.0] and merged["s"].item() == 2.0


def test_dare_drops_at_rate_p_rescales_and_is_seeded(tmp_path):
    ones = {"w": torch.ones(200, 50)}
    run(tasks_of(ones), "dare", tmp_path / "a.st", p=0.75, scale=1.0, seed=3)
    run(tasks_of(ones), "dare", tmp_path / "b.st", p=0.75, scale=1.0, seed=3, chunk_elements=64)
    run(tasks_of(ones), "dare", tmp_path / "c.st", p=0.75, scale=1.0, seed=4)
    a, b, c = (read_all(tmp_path / f"{x}.st")[0]["w"] for x in "abc")
    assert torch.equal(a, b)  # the same draws however the tensor is sliced
    assert not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 4.0}
    assert (a > 0).float().mean().item() == pytest.approx(0.25, abs=0.02)
    run(tasks_of({"w": [1.0, -2.0]}, {"w": [3.0, 1.0]}), "dare", tmp_path / "p0.st", p=0.0, scale=0.5)
    assert read_all(tmp_path / "p0.st")[0]["w"].tolist() == [2.0, -0.5]  # p = 0 is task arithmetic


def test_dare_ties_with_p_0_elects_signs_and_takes_the_disjoint_mean(tmp_path):
    inputs = tasks_of(
        {"w": [3.0, 2.0, -1.0, 4.0, 1.0]}, {"w": [-1.0, 2.0, -3.0, 4.0, -1.0]}, {"w": [1.0, -2.0, 0.0, 1.0, 0.0]}
    )
    run(inputs, "dare-ties", tmp_path / "dt.st", p=0.0, scale=0.5)
    merged, header = read_all(tmp_path / "dt.st")
    assert header.kind == "delta" and header.method == "dare-ties"
    # sums 3, 2, −4, 9, 0: means of the agreeing entries (3+1)/2, (2+2)/2, (−1−3)/2, (4+4+1)/3, 1/1, times λ = 0.5;
    # the last sums to 0, which elects +1 as in mergekit
    assert merged["w"].tolist() == [1.0, 1.0, -1.0, 1.5, 0.5]
    run(inputs, "dare-ties", tmp_path / "default.st", p=0.0)
    assert read_all(tmp_path / "default.st")[0]["w"].tolist() == [2.0, 2.0, -2.0, 3.0, 1.0]  # λ = 1 by default


def reference_dare_ties(deltas, p, seed, scale):
    """DARE-TIES from its definition: `dare`'s drops, drawn here from ``uniform_draws`` over each whole tensor, then
    the sign of the sum (+1 where it is 0, as mergekit's), and the mean of the entries of that sign."""
    merged = {}
    for name in deltas[0]:
        rescaled = torch.stack(
            [
                d[name] / (1 - p) * (uniform_draws(seed, f"{i}/{name}", 0, d[name].numel()) >= p).reshape(d[name].shape)
                for i, d in enumerate(deltas)
            ]
        )
        agreeing = torch.sign(rescaled) == torch.where(rescaled.sum(0) >= 0, 1.0, -1.0)
        merged[name] = scale * (rescaled * agreeing).sum(0) / agreeing.sum(0).clamp(min=1)
    return merged


def test_dare_ties_equals_its_definition_from_dares_drops_however_sliced(tmp_path):
    deltas = random_deltas(3, SHAPES, seed=5)
    inputs = [LoadedDelta(d, TaskEntry(f"t{i}")) for i, d in enumerate(deltas)]
    expected = reference_dare_ties(deltas, p=0.6, seed=7, scale=0.8)
    for chunk_elements in (None, 16):
        path = tmp_path / f"dt-{chunk_elements}.st"
        run(inputs, "dare-ties", path, chunk_elements=chunk_elements, p=0.6, seed=7, scale=0.8)
        merged, _ = read_all(path)
        for name in SHAPES:
            assert torch.allclose(merged[name], expected[name], rtol=1e-6, atol=1e-7), (chunk_elements, name)
    # one task: every kept entry agrees with its own sign, so DARE-TIES is `dare` (the same drops)
    run(inputs[:1], "dare-ties", tmp_path / "one.st", p=0.6, seed=7, scale=0.8)
    run(inputs[:1], "dare", tmp_path / "dare.st", p=0.6, seed=7, scale=0.8)
    one, dare = read_all(tmp_path / "one.st")[0], read_all(tmp_path / "dare.st")[0]
    assert all(torch.equal(one[name], dare[name]) for name in SHAPES)


def test_uniform_draws_are_uniform_and_independent_of_slicing():
    whole = uniform_draws(0, "0/w", 0, 100_000)
    assert torch.equal(whole[300:700], uniform_draws(0, "0/w", 300, 400))
    assert 0 <= whole.min() and whole.max() < 1 and abs(whole.mean().item() - 0.5) < 0.01
    assert not torch.equal(whole[:1000], uniform_draws(0, "1/w", 0, 1000))


# The engine --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(name for name, method in METHODS.items() if method.inputs == "delta"))
def test_streamed_output_equals_the_whole_tensor_run(tmp_path, method):
    deltas = random_deltas(3, SHAPES, seed=2)
    inputs = [LoadedDelta(d, TaskEntry(f"t{i}")) for i, d in enumerate(deltas)]
    run(inputs, method, tmp_path / "whole.st")
    run(inputs, method, tmp_path / "sliced.st", chunk_elements=16)
    whole, _ = read_all(tmp_path / "whole.st")
    sliced, _ = read_all(tmp_path / "sliced.st")
    assert whole.keys() == sliced.keys()
    for name in whole:
        assert torch.equal(whole[name], sliced[name]), name


def test_slices_begin_at_mask_bytes():
    layout = {"odd": (torch.float32, (50, 3)), "flat": (torch.float32, (1001,)), "s": (torch.float32, ())}
    plan = plan_tensors(layout, 20)
    for tensor in plan:
        row = math.prod(tensor.shape[1:]) if tensor.shape else 1
        assert all(start * row % 8 == 0 for start, _ in tensor.rows)
        assert tensor.rows[0][0] == 0 and tensor.rows[-1][1] == (tensor.shape[0] if tensor.shape else 1)
        assert all(a[1] == b[0] for a, b in zip(tensor.rows, tensor.rows[1:], strict=False))


def test_continual_unify_over_three_sessions_equals_the_reference_iteration(tmp_path):
    sessions = [random_deltas(2, SHAPES, seed=10), random_deltas(1, SHAPES, seed=11), random_deltas(2, SHAPES, seed=12)]
    previous, reference = None, []
    for number, new in enumerate(sessions):
        # the reference iteration: decouple every expert of the last session, append the new deltas, unify
        reference = reference + new
        _, _, rescalers, expert = reference_condu(reference)
        reference = expert

        names = [f"s{number}t{i}" for i in range(len(new))]
        inputs = [LoadedDelta(d, TaskEntry(n)) for d, n in zip(new, names, strict=True)]
        output = tmp_path / f"session{number}.st"
        if previous is None:
            run(inputs, "condu", output, chunk_elements=40)
        else:
            with open_unified(previous) as prev:
                run(continual_inputs(prev, inputs, replace=False), "condu", output, chunk_elements=40)
        got, got_rescalers = experts(output)
        assert torch.allclose(got_rescalers, rescalers, rtol=1e-5)
        for i, task_expert in enumerate(expert):
            for name in SHAPES:
                assert torch.allclose(got[i][name], task_expert[name], rtol=1e-5, atol=1e-7), (number, i, name)
        previous = output
    with open_unified(previous) as last:
        assert last.task_names == ["s0t0", "s0t1", "s1t0", "s2t0", "s2t1"]


def test_dtype_mismatch_and_a_non_finite_delta_are_refused(tmp_path):
    from cftool.errors import CftoolError

    with pytest.raises(CftoolError, match="is torch.float16, not torch.float32"):
        run(tasks_of({"w": [1.0]}) + [LoadedDelta({"w": torch.ones(1).half()}, TaskEntry("h"))], "mean", tmp_path / "x")
    with pytest.raises(CftoolError, match="NaN or Inf"):
        run(tasks_of({"w": [1.0, float("inf")]}), "ties", tmp_path / "y")
    assert list(tmp_path.iterdir()) == []


# The pieces: radix select, bit counts, row reads and writes ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_radix_select_is_exact_in_slices(dtype):
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5000, generator=generator).to(dtype)
    values[:300] = 0
    values[300:400] = values[4000]  # ties
    values[400:410] = -values[410:420]  # ties in magnitude, of both signs
    ranks = {k: k for k in (1, 2, 77, 4000, 4800, 5000)}
    select = RadixSelect(dtype, ranks)
    assert select.passes == {16: 1, 32: 2, 64: 4}[torch.finfo(dtype).bits]
    while not select.done:
        for part in values.split(333):
            for k in ranks:
                select.add(k, part)
        for k in ranks:
            select.close(k)
        select.next_pass()
    ordered = values.abs().double().sort(descending=True).values
    for k in ranks:
        assert select.threshold(k).dtype == dtype
        assert select.threshold(k).double() == ordered[k - 1], k


def test_count_set_bits_counts_a_packed_mask():
    mask = torch.rand(1001, generator=torch.Generator().manual_seed(0)) > 0.3
    assert count_set_bits(pack_bits(mask)) == int(mask.sum())


def test_rows_are_read_and_written_in_place(tmp_path):
    tensor = torch.arange(60, dtype=torch.float32).reshape(12, 5)
    path = tmp_path / "rows.safetensors"
    with CheckpointWriter(path, {"t": (torch.float32, (12, 5)), "s": (torch.float32, ())}, Header("delta", "x")) as w:
        w.write("s", torch.tensor(2.0))
        w.write_rows("t", 0, tensor[:7])
        with pytest.raises(ValueError, match="in order"):
            w.write_rows("t", 9, tensor[9:])
        w.write_rows("t", 7, tensor[7:])
    with open_checkpoint(path) as reader:
        assert torch.equal(reader["t"], tensor)
        assert torch.equal(reader.read_rows("t", 3, 8), tensor[3:8])
        assert reader.read_rows("t", 4, 4).shape == (0, 5)


def test_a_writer_refuses_an_unfinished_tensor(tmp_path):
    with pytest.raises(ValueError, match="never written"):
        with CheckpointWriter(tmp_path / "x.st", {"t": (torch.float32, (4,))}, Header("delta", "x")) as w:
            w.write_rows("t", 0, torch.zeros(2))
    assert list(tmp_path.iterdir()) == []


def test_delta_files_stream_like_loaded_ones(tmp_path):
    deltas = random_deltas(3, SHAPES, seed=5)
    files = []
    for i, d in enumerate(deltas):
        files.append(save_checkpoint(tmp_path / f"d{i}.safetensors", d, Header("delta", "b", task=f"t{i}")))
    readers = [open_checkpoint(f) for f in files]
    try:
        run([DeltaFile(r) for r in readers], "condu", tmp_path / "files.st", chunk_elements=32)
    finally:
        for reader in readers:
            reader.close()
    run([LoadedDelta(d, TaskEntry(f"t{i}")) for i, d in enumerate(deltas)], "condu", tmp_path / "loaded.st")
    a, _ = read_all(tmp_path / "files.st")
    b, _ = read_all(tmp_path / "loaded.st")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_every_method_cites_its_definition():
    get_method("condu")
    for method in METHODS.values():
        assert "§5.2" in method.function.__doc__.splitlines()[0] and "§5.2" in method.reference
