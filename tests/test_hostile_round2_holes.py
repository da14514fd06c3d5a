"""Bad input, round 2 (issue 20), the holes left after the first pass: symbolic-link loops in image folders, rates
that overflow the optimiser or make the last step's weights Inf, configs nested beyond parsing, unbounded counts,
and pickles of protocols the readers do not take."""

import pickle

import pytest
import torch
from conftest import one_line_error

from cftool.data import load_task
from cftool.data.mtil.readers import mtil_source
from cftool.errors import CftoolError
from cftool.io.foreign import read_coop_prompt
from cftool.train.loop import MAX_STEPS, TrainOptions
from tests.test_bad_data_files import cifar_content, write_cifar100, write_png
from tests.test_foreign import coop_state_dict


@pytest.mark.parametrize("target", ["..", "."])
def test_a_folder_dataset_with_a_symbolic_link_loop_is_refused_not_listed_again_and_again(tmp_path, target):
    write_png(tmp_path / "shapes" / "circle" / "0.png")
    write_png(tmp_path / "shapes" / "square" / "0.png")
    link = tmp_path / "shapes" / "square" / "again"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(CftoolError) as error:
        load_task(f"folder:{tmp_path / 'shapes'}").source.labels("test")  # was 300-odd copies of the two images
    assert f"folder:{link}: a symbolic link to {(link.parent / target).resolve()}, a folder it is inside" in str(
        error.value
    )


def test_a_folder_dataset_may_link_to_a_folder_outside_itself(tmp_path):
    write_png(tmp_path / "elsewhere" / "0.png")
    write_png(tmp_path / "shapes" / "circle" / "0.png")
    (tmp_path / "shapes" / "square").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert load_task(f"folder:{tmp_path / 'shapes'}").source.labels("test") == [0, 1]


def test_an_adamw_rate_whose_first_step_overflows_float32_is_refused_when_the_options_are_built():
    TrainOptions(iterations=1, optimizer="adamw", lr=3e37)  # lr/(1-β1) = 3e38 still fits
    with pytest.raises(CftoolError, match=r"--lr 3e\+38 is too large for AdamW: .* = 3e\+39"):
        TrainOptions(iterations=1, optimizer="adamw", lr=3e38)  # was a RuntimeError in the optimiser's step
    with pytest.raises(CftoolError, match="too large for AdamW"):
        TrainOptions(iterations=1, optimizer="adamw", lr=1e30, weight_decay=1e10)
    TrainOptions(iterations=1, optimizer="sgd", lr=3e38)  # SGD multiplies by lr alone


def test_weights_made_inf_by_the_last_step_are_refused_and_nothing_is_written(cli, tmp_path):
    output = tmp_path / "head.safetensors"
    # The loss of the only step is computed before its update: finite, while the update makes the weights Inf.
    options = ["--optimizer", "sgd", "--lr", "10", "--weight-decay", "3e38", "--iterations", "1", "--batch-size", "8"]
    data = ["--zs", "tiny", "--data", "toy:food", "--method", "head", "--device", "cpu"]
    error = one_line_error(cli("finetune", *data, *options, "-o", output))
    assert "the weights became NaN or Inf at step 1 of 1: training diverged and nothing was written" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [{"iterations": 10**12}, {"epochs": 1e12}])
def test_a_step_count_beyond_any_schedule_is_refused(options):
    with pytest.raises(CftoolError, match="must be at most 100,000,000"):
        TrainOptions(**options)


def test_epochs_that_make_too_many_steps_over_the_data_are_refused():
    options = TrainOptions(epochs=1e6, batch_size=1)
    assert options.total_steps(100) == MAX_STEPS
    with pytest.raises(CftoolError, match=r"--epochs 1e\+06 over 101 images in batches of 1 is 101,000,000 steps"):
        options.total_steps(101)


@pytest.mark.parametrize("command", ["finetune", "eval"])
def test_a_worker_count_that_would_fork_without_end_is_refused(cli, tmp_path, command):
    output = ["-o", tmp_path / "out.safetensors"] if command == "finetune" else []
    result = cli(command, "--zs", "tiny", "--data", "toy:food", "--workers", "100000", *output)
    assert "Invalid value for '--workers': Input should be less than or equal to 256" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def nested_aliases(levels: int) -> str:
    """YAML whose value is a list of ten lists of ten … (``levels`` deep) through aliases: a few lines, 10^levels
    strings once expanded."""
    anchors = ['&x0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    anchors += [f"&x{level} [{', '.join([f'*x{level - 1}'] * 10)}]" for level in range(1, levels)]
    return f"towers: [{', '.join(anchors)}]\ndata: *x{levels - 1}\n"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("iterations: " + "[" * 100_000, "nests lists or mappings deeper than Python can parse"),  # RecursionError
        (nested_aliases(9), "'towers' holds nested lists or mappings"),  # hung, expanding 10^9 strings
        ("data: {source: toy:food}\n", "'data' holds nested lists or mappings"),
    ],
)
def test_a_config_nested_beyond_any_option_is_one_line(cli, tmp_path, text, fragment):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    error = one_line_error(cli("finetune", "--config", config, "--zs", "tiny", "-o", tmp_path / "out.safetensors"))
    assert f"{config}" in error and fragment in error
    assert list(tmp_path.iterdir()) == [config]


def test_a_cifar_pickle_of_protocol_5_says_what_it_is_and_what_to_do(tmp_path):
    folder = write_cifar100(tmp_path)
    content = {key.decode(): value for key, value in cifar_content("train").items()}
    (folder / "train").write_bytes(pickle.dumps(content, protocol=5))  # numpy arrays as protocol 5's bytearrays
    with pytest.raises(CftoolError) as error:
        mtil_source("CIFAR100", tmp_path).labels("train")
    assert (
        "it is a pickle of protocol 5 (opcode BYTEARRAY8), which cftool does not read; use the files of the "
        "original cifar-100-python.tar.gz (protocol 2), or pickle them again at protocol 4 or lower" in str(error.value)
    )


def test_a_cifar_file_of_an_unknown_protocol_says_so(tmp_path):
    folder = write_cifar100(tmp_path)
    (folder / "meta").write_bytes(b"\x80\x09N.")
    with pytest.raises(CftoolError) as error:
        _ = mtil_source("CIFAR100", tmp_path).classnames
    assert f"cannot read {folder / 'meta'} (refused: it declares pickle protocol 9, beyond Python's highest (5)" in str(
        error.value
    )


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("protocol", [4, 5])
def test_a_dassl_checkpoint_pickled_at_a_protocol_torch_cannot_read_weights_only_says_so(
    tmp_path, recwarn, protocol, zip_format
):
    path = tmp_path / "model.pth.tar-5"
    state = {"state_dict": coop_state_dict(torch.zeros(4, 128)), "epoch": 5}
    torch.save(state, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CftoolError) as error:
        read_coop_prompt(path)
    assert f"{path}: its pickle is of protocol {protocol}, which torch.load(weights_only=True) does not read" in str(
        error.value
    )
    assert "save it again where it was made with torch.save's default protocol (2)" in str(error.value)
    torch.save(state, path, pickle_protocol=3, _use_new_zipfile_serialization=zip_format)
    read_coop_prompt(path)
    assert not [warning for warning in recwarn if "pickle protocol" in str(warning.message)]  # torch's noise, muted
