"""Files keep working when they and their base move: a `model` file is self-sufficient, other files record their
base by an absolute path and by its content hash, and accept any copy of those weights."""

import shutil
from pathlib import Path

import torch
from conftest import one_line_error

from cftool.zoo import load_model


def _coop(cli, zs, folder, output):
    result = cli(
        "finetune",
        "--zs",
        zs,
        "--data",
        f"folder:{folder}",
        "--method",
        "coop",
        "--epochs",
        "1",
        "--lr",
        "0.05",
        "--batch-size",
        "8",
        "-o",
        output,
    )
    assert result.code == 0, result.stderr
    return output


def test_a_model_file_is_self_sufficient_after_its_base_weights_are_gone(cli, tmp_path, tiny):
    weights = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), weights)
    model_file = tmp_path / "base.safetensors"
    assert cli("export", "--zs", f"cftool-tiny:{weights}", "-o", model_file).code == 0
    weights.unlink()
    assert load_model(str(model_file)).weights_sha256 == tiny.weights_sha256
    result = cli("eval", "--zs", model_file, "--data", "toy:food", "--json")
    assert result.code == 0, result.stderr


def test_files_made_from_a_relative_base_work_from_any_folder_and_from_any_copy(
    cli, tmp_path, tiny, toy_folders, monkeypatch
):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    torch.save(tiny.model.state_dict(), work / "weights.pt")
    monkeypatch.chdir(work)
    prompt = _coop(cli, "cftool-tiny:weights.pt", toy_folders["food"], work / "coop.safetensors")

    monkeypatch.chdir(elsewhere)  # the recorded base is absolute, so no --zs is needed here
    assert cli("eval", prompt, "--data", f"folder:{toy_folders['food']}").code == 0

    shutil.move(work / "weights.pt", elsewhere / "moved.pt")
    error = one_line_error(cli("eval", prompt, "--data", f"folder:{toy_folders['food']}"))
    assert "no longer there" in error and "--zs cftool-tiny:" in error and tiny.weights_sha256[:12] in error
    # Any copy of the same weights is the same base; different weights are not.
    assert cli("eval", prompt, "--zs", "cftool-tiny:moved.pt", "--data", f"folder:{toy_folders['food']}").code == 0
    other = {name: t + 1 if t.is_floating_point() else t for name, t in tiny.model.state_dict().items()}
    torch.save(other, elsewhere / "other.pt")
    error = one_line_error(cli("eval", prompt, "--zs", "cftool-tiny:other.pt", "--data", "toy:food"))
    assert "weights sha256" in error


def test_a_plain_pt_given_alone_as_zs_points_at_the_arch_path_form(cli, tmp_path, tiny):
    weights = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), weights)
    error = one_line_error(cli("eval", "--zs", weights, "--data", "toy:food"))
    assert f"--zs ARCH:{weights}" in error and "not a safetensors" not in error


def test_fp16_weights_stay_fp16_through_import_and_export_unless_dtype_says_otherwise(cli, tmp_path, tiny):
    from safetensors import safe_open

    half = tmp_path / "half.pt"
    torch.save({n: t.half() if t.is_floating_point() else t for n, t in tiny.model.state_dict().items()}, half)
    model_file = tmp_path / "model.safetensors"
    assert cli("import", half, "--zs", "tiny", "-o", model_file).code == 0
    assert cli("export", model_file, "-o", tmp_path / "plain.pt").code == 0
    assert cli("export", model_file, "--dtype", "bf16", "-o", tmp_path / "plain.safetensors").code == 0
    assert cli("import", half, "--zs", "tiny", "--dtype", "fp32", "-o", tmp_path / "fp32.safetensors").code == 0

    def float_dtypes(tensors):
        return {str(t.dtype) for t in tensors if t.is_floating_point()}

    with safe_open(str(model_file), "pt") as imported:
        assert float_dtypes(imported.get_tensor(n) for n in imported.keys()) == {"torch.float16"}
    assert float_dtypes(torch.load(tmp_path / "plain.pt").values()) == {"torch.float16"}
    with safe_open(str(tmp_path / "plain.safetensors"), "pt") as exported:
        assert float_dtypes(exported.get_tensor(n) for n in exported.keys()) == {"torch.bfloat16"}
    with safe_open(str(tmp_path / "fp32.safetensors"), "pt") as widened:
        assert float_dtypes(widened.get_tensor(n) for n in widened.keys()) == {"torch.float32"}
    fp8 = cli("export", model_file, "--dtype", "fp8", "-o", tmp_path / "x.pt")
    assert fp8.code == 2 and "'--dtype': 'fp8' is not one of 'fp32', 'fp16', 'bf16'" in one_line_error(fp8)


def test_no_output_replaces_an_input_even_with_force(cli, tmp_path, tiny):
    """`-o` equal to any input of a command is refused before anything is written, whatever the command."""
    base = tmp_path / "base.safetensors"
    assert cli("export", "--zs", "tiny", "-o", base).code == 0
    weights = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), weights)
    prompt = tmp_path / "prompt.safetensors"
    assert (
        cli(
            "finetune",
            "--zs",
            "tiny",
            "--data",
            "toy:food",
            "--shots",
            "2",
            "--iterations",
            "1",
            "--batch-size",
            "4",
            "-o",
            prompt,
        ).code
        == 0
    )
    runs = {
        "eval": ("eval", prompt, "--data", "toy:food", "-o", prompt),
        "export": ("export", base, "-o", base),
        "import": ("import", weights, "--zs", "tiny", "-o", weights),
        "continue": ("continue", prompt, "--iterations", "1", "-o", prompt),
        "delta": ("delta", base, "--zs", "tiny", "-o", base),
        "eval --zs": ("eval", "--zs", base, "--data", "toy:food", "-o", base),
    }
    for name, args in runs.items():
        target = Path(args[-1])
        before = target.read_bytes()
        error = one_line_error(cli(*args, "--force"))
        assert "input" in error, name
        assert target.read_bytes() == before, name
