"""`--augment`: the references' training transforms at the model's own size and normalisation, reproducible draws,
and `finetune` / `continue` training on augmented images instead of cached features."""

import io
import json
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import one_line_error, torch_threads
from open_clip.transform import PreprocessCfg
from PIL import Image, ImageDraw
from test_finetune import _interrupt_at, tensors
from torchvision.transforms import Normalize

from cftool.cli import main
from cftool.data import DatasetSpec, load_task
from cftool.data.augment import training_transform
from cftool.errors import CftoolError
from cftool.io.checkpoint import open_checkpoint
from cftool.options import FINETUNE_METHODS
from cftool.train import FinetuneJob, TrainingInterrupted, TrainOptions, finetune, state_path
from cftool.train.loop import BatchPlan, Ranks, _batches

SEED = 5
# 2 images of each of food's 6 classes, a batch of 6: a run of 4 steps takes a second or two.
DATA = ["--zs", "tiny", "--data", "toy:food", "--shots", "2", "--device", "cpu"]
TRAIN = ["--method", "coop", "--batch-size", "6", "--iterations", "4", "--seed", str(SEED), "--no-prototypes"]
NOTICE = "--augment coop: image features are recomputed every epoch"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def coop_run(tmp_path_factory) -> Path:
    """`finetune --augment coop` once, with a feature cache folder."""
    folder = tmp_path_factory.mktemp("augmented")
    output = folder / "coop.safetensors"
    args = ["finetune", *DATA, *TRAIN, "--augment", "coop", "--cache-dir", folder / "cache", "-o", output]
    with torch_threads(1), redirect_stdout(io.StringIO()):
        assert main([str(arg) for arg in args]) == 0
    return output


def normalisation(transform) -> tuple[tuple[float, ...], tuple[float, ...]]:
    [normalize] = [t for t in transform.transforms if isinstance(t, Normalize)]
    return tuple(normalize.mean), tuple(normalize.std)


def pixels(image: torch.Tensor, transform) -> torch.Tensor:
    """A transform's output back in [0, 1]."""
    mean, std = (torch.tensor(values)[:, None, None] for values in normalisation(transform))
    return image * std + mean


def horizontal_ramp() -> Image.Image:
    """Red grows from left to right: a crop keeps the direction, a flip reverses it."""
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(64, 64)
    rgb = torch.stack([ramp, torch.full_like(ramp, 128), torch.full_like(ramp, 128)], dim=-1)
    return Image.fromarray(rgb.numpy())


def framed() -> Image.Image:
    """A red frame 2 pixels wide, 8 pixels inside the border of a 64-pixel grey image."""
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((8, 8, 55, 55), outline=(255, 0, 0), width=2)
    return image


def frame_extent(image: torch.Tensor, transform) -> tuple[int, int]:
    """Height and width of the box around the red pixels (0, 0 when none are left)."""
    red, green = pixels(image, transform)[:2]
    rows, cols = torch.nonzero((red > 0.6) & (green < 0.35), as_tuple=True)
    if len(rows) == 0:
        return 0, 0
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def draws(transform, image: Image.Image, n: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [transform(image) for _ in range(n)]


@pytest.mark.parametrize("augment", ["coop", "zscl"])
def test_augmented_images_have_the_size_and_normalisation_of_the_eval_preprocess(tiny, augment):
    transform = training_transform(augment, tiny)
    assert normalisation(transform) == normalisation(tiny.preprocess)
    grey = Image.new("RGB", (96, 48), (90, 140, 200))  # not square: the crop, not the input, sets the size
    augmented, evaluated = transform(grey), tiny.preprocess(grey)
    assert augmented.shape == evaluated.shape == (3, 64, 64)
    assert torch.allclose(augmented, evaluated, atol=0.03)  # a crop of a plain colour is that colour
    assert training_transform("none", tiny) is tiny.preprocess


def test_the_size_and_normalisation_come_from_the_model_in_use():
    config = asdict(PreprocessCfg(size=80, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    model = SimpleNamespace(preprocess=None, model=SimpleNamespace(visual=SimpleNamespace(preprocess_cfg=config)))
    for augment in ("coop", "zscl"):
        image = training_transform(augment, model)(Image.new("RGB", (64, 64), (128, 128, 128)))
        assert image.shape == (3, 80, 80)
        assert torch.allclose(image, torch.zeros_like(image), atol=0.03)  # grey is the mean here


def test_coop_crops_and_flips_and_a_seeded_draw_is_reproducible(tiny):
    transform = training_transform("coop", tiny)
    first, second = draws(transform, horizontal_ramp(), 2)
    assert not torch.equal(first, second)
    assert torch.equal(draws(transform, horizontal_ramp(), 1)[0], first)

    def rightwards(image: torch.Tensor) -> bool:
        red = pixels(image, transform)[0]
        return bool(red[:, -8:].mean() > red[:, :8].mean())

    coop = [rightwards(image) for image in draws(transform, horizontal_ramp(), 20)]
    assert any(coop) and not all(coop)
    assert all(rightwards(image) for image in draws(training_transform("zscl", tiny), horizontal_ramp(), 20))


def test_zscl_crops_keep_nine_tenths_of_the_image_and_coop_crops_may_keep_far_less(tiny):
    # Width and height of a crop of ≥ 90 % of the area at ratios within [3/4, 4/3] are each ≥ 0.9 of the image's, so
    # the whole frame stays in every zscl crop and spans ≥ 48 of the 64 output pixels.
    zscl = training_transform("zscl", tiny)
    assert all(min(frame_extent(image, zscl)) >= 46 for image in draws(zscl, framed(), 30))
    coop = training_transform("coop", tiny)
    assert any(min(frame_extent(image, coop)) < 40 for image in draws(coop, framed(), 30))


def test_augmented_batches_are_a_function_of_seed_and_step_alone(tiny):
    """What a resumed run, each DDP rank and each data-loading worker draws is what one uninterrupted process does."""
    task = load_task(DatasetSpec("toy:food", shots=2, seed=SEED))
    dataset = task.split("train", training_transform("coop", tiny))
    labels = torch.tensor(dataset.labels)
    plan = BatchPlan(len(labels), 6, SEED)

    def images(steps: range, ranks: Ranks, workers: int = 0) -> list[torch.Tensor]:
        return [inputs for inputs, _ in _batches(dataset, labels, plan, ranks, steps, workers)]

    straight = images(range(3), Ranks())
    assert not torch.equal(straight[0], straight[2])  # step 2 revisits step 0's images (12 images, batches of 6)
    assert torch.equal(images(range(2, 3), Ranks())[0], straight[2])
    halves = [images(range(2, 3), Ranks(rank, 2))[0] for rank in range(2)]
    assert torch.equal(torch.cat(halves), straight[2])
    assert all(torch.equal(a, b) for a, b in zip(images(range(3), Ranks(), workers=1), straight, strict=True))


def test_finetune_with_augmentation_is_reproducible_records_it_and_trains_on_images(cli, tmp_path, caplog, coop_run):
    cache = tmp_path / "cache"
    again = tmp_path / "again.safetensors"
    result = cli("finetune", *DATA, *TRAIN, "--augment", "coop", "--cache-dir", cache, "-o", again)
    assert result.code == 0, result.stderr
    assert again.read_bytes() == coop_run.read_bytes()
    assert any(NOTICE in record.getMessage() for record in caplog.records)

    with open_checkpoint(again) as ckpt:
        config = ckpt.header.config
    assert config["augment"] == "coop" and config["feature_cache"] is False
    # Training encoded augmented batches, and the prototypes see the images through the training transform too (as
    # ConDU's do): nothing of an augmented run is cached.
    assert not cache.exists() or not list(cache.iterdir())
    plain = tmp_path / "plain.safetensors"
    assert cli("finetune", *DATA, *TRAIN, "--cache-dir", cache, "-o", plain).code == 0
    assert len(list(cache.iterdir())) == 1  # the unaugmented run caches the features it trains on
    with open_checkpoint(plain) as ckpt:
        assert ckpt.header.config["augment"] == "none" and ckpt.header.config["feature_cache"] is True
    assert not torch.allclose(tensors(plain)["ctx"], tensors(again)["ctx"])


def test_resume_of_an_augmented_run_equals_the_uninterrupted_one(cli, tmp_path, coop_run):
    output = tmp_path / "resumed.safetensors"
    coop = FINETUNE_METHODS["coop"]
    job = FinetuneJob(
        zs="tiny",
        data=DatasetSpec("toy:food", shots=2, seed=SEED),
        method="coop",
        output=output,
        train=TrainOptions(iterations=4, batch_size=6, lr=coop.lr, optimizer=coop.optimizer, seed=SEED, augment="coop"),
        method_options={"n_ctx": None, "ctx_init": "a photo of a"},
    )
    with pytest.raises(TrainingInterrupted, match="after step 2 of 4"):
        finetune(job, progress=_interrupt_at(1))
    assert state_path(output).is_file()
    result = cli("finetune", *DATA, *TRAIN, "--augment", "coop", "-o", output, "--resume")
    assert result.code == 0, result.stderr
    assert torch.equal(tensors(output)["ctx"], tensors(coop_run)["ctx"])


def test_continue_keeps_the_recorded_augmentation_unless_told(cli, tmp_path, coop_run):
    recorded = {}
    for name, flags in (("kept", []), ("plain", ["--augment", "none"])):
        output = tmp_path / f"{name}.safetensors"
        result = cli("continue", coop_run, "--iterations", "2", "--lmc-samples", "0.5,1.0", "-o", output, *flags)
        assert result.code == 0, result.stderr
        with open_checkpoint(output) as ckpt:
            recorded[name] = ckpt.header.config["augment"], ckpt.header.config["feature_cache"]
    assert recorded == {"kept": ("coop", False), "plain": ("none", True)}


def test_an_unknown_augmentation_is_one_line_and_writes_nothing(cli, tmp_path, tiny, coop_run):
    output = tmp_path / "bogus.safetensors"
    for args in (["finetune", *DATA, *TRAIN, "-o", output], ["continue", coop_run, "-o", output]):
        result = cli(*args, "--augment", "bogus")
        assert result.code == 2  # a usage error
        assert "--augment" in one_line_error(result) and "'bogus' is not one of 'none', 'coop', 'zscl'" in result.stderr
    assert not output.exists()
    with pytest.raises(CftoolError, match="none, coop, zscl"):
        training_transform("bogus", tiny)


def test_a_trained_image_tower_trains_on_zscl_crops_with_no_cache_notice(cli, tmp_path, caplog):
    output = tmp_path / "lora.safetensors"
    lora = ["--method", "lora", "--rank", "2", "--towers", "image", "--batch-size", "6", "--iterations", "2"]
    result = cli("finetune", *DATA, *lora, "--augment", "zscl", "--seed", SEED, "-o", output, "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["steps"] == 2
    assert not any("--augment" in record.getMessage() for record in caplog.records)  # no feature cache to skip
    with open_checkpoint(output) as ckpt:
        assert ckpt.header.config["augment"] == "zscl"
