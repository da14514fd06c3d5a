"""MTIL as ZSCL's and ConDU's training code runs it: the training text head, the few-shot draw, the prototypes and
order II, each checked against the reference computation written out here from the official code's logic."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_mtil_datasets import EUROSAT_FOLDERS, zscl_split

from cftool.data import BENCHMARKS
from cftool.io.checkpoint import open_checkpoint

EUROSAT_CLASSES = len(EUROSAT_FOLDERS)
EUROSAT_TEMPLATE_COUNT = 3
IMAGES_PER_FOLDER = 5


@pytest.fixture(scope="module")
def eurosat_root(tmp_path_factory):
    """`mtil:EuroSAT` fabricated in its real layout, five textured images a class (a random crop of a solid image
    would be the image itself); ZSCL's seeded 80/20 split leaves every class some training images."""
    root = tmp_path_factory.mktemp("mtil")
    pixels = np.random.default_rng(0)
    whole = []
    for label, folder in enumerate(EUROSAT_FOLDERS):
        for number in range(1, IMAGES_PER_FOLDER + 1):
            path = root / "eurosat" / "2750" / folder / f"{folder}_{number}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path, "JPEG", quality=95)
            whole.append(label)
    train, _ = zscl_split(len(whole))
    assert {whole[i] for i in train} == set(range(EUROSAT_CLASSES))
    return root


@pytest.fixture
def prompts_per_step(monkeypatch):
    """The number of prompts each differentiable text-encoder pass encodes (zero-shot heads and prototypes run
    without gradients, training steps with them)."""
    from open_clip.model import CLIP

    counts = []
    encode_text = CLIP.encode_text

    def counting(self, text, normalize=False):
        if torch.is_grad_enabled():
            counts.append(len(text))
        return encode_text(self, text, normalize=normalize)

    monkeypatch.setattr(CLIP, "encode_text", counting)
    return counts


def _finetune(cli, root, output, *extra):
    result = cli(
        "finetune",
        "--zs",
        "tiny",
        "--data",
        "mtil:EuroSAT",
        "--data-root",
        root,
        "--method",
        "full",
        "--iterations",
        "2",
        "--batch-size",
        "4",
        "-o",
        output,
        *extra,
    )
    assert result.code == 0, result.stderr
    with open_checkpoint(output) as ckpt:
        return ckpt.header.config


# Item 1: ZSCL builds its training head from `dataset.template`, templates[0] (mtil/src/datasets/collections.py:61-64),
# one prompt per class (mtil/src/models/finetune.py:103, encoded every step at :215).


def test_training_on_mtil_encodes_one_prompt_per_class_and_continue_keeps_it(
    cli, eurosat_root, tmp_path, prompts_per_step
):
    config = _finetune(cli, eurosat_root, tmp_path / "full.safetensors")
    assert config["train_templates"] == "first"
    assert prompts_per_step == [EUROSAT_CLASSES] * 2

    prompts_per_step.clear()
    result = cli(
        "continue",
        tmp_path / "full.safetensors",
        "--zs",
        "tiny",
        "--iterations",
        "1",
        "--zs-reg",
        "param",
        "-o",
        tmp_path / "continued.safetensors",
    )
    assert result.code == 0, result.stderr
    with open_checkpoint(tmp_path / "continued.safetensors") as ckpt:
        assert ckpt.header.config["train_templates"] == "first"
    # The current point's logits, then the path's points but α = 1: each encodes the classes once.
    assert set(prompts_per_step) == {EUROSAT_CLASSES}


def test_all_templates_on_request(cli, eurosat_root, tmp_path, prompts_per_step):
    config = _finetune(cli, eurosat_root, tmp_path / "full.safetensors", "--train-templates", "all")
    assert config["train_templates"] == "all"
    assert prompts_per_step == [EUROSAT_CLASSES * EUROSAT_TEMPLATE_COUNT] * 2


def test_first_template_head_is_zscls(eurosat_root):
    """The training logits are ZSCL's: logit scale × normalised image features @ the normalised feature of the first
    template's prompt of each class (finetune.py:215-223)."""
    from cftool.data import load_task
    from cftool.kinds.model import Full
    from cftool.zoo import load_model

    zoo = load_model("tiny")
    task = load_task("mtil:EuroSAT", eurosat_root)
    method = Full(zoo, task.classnames, task.templates, towers=("text",), train_templates="first")
    images = torch.nn.functional.normalize(torch.randn(3, zoo.model.text_projection.shape[1]), dim=-1)
    with torch.no_grad():
        logits = method(images)
        prompts = zoo.tokenizer([task.templates[0].format(name) for name in task.classnames])
        embeddings = zoo.model.encode_text(prompts)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        expected = zoo.model.logit_scale.exp() * images @ embeddings.t()
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)


def test_train_templates_is_refused_where_it_means_nothing(cli, tmp_path):
    result = cli(
        "finetune",
        "--zs",
        "tiny",
        "--data",
        "toy:food",
        "--method",
        "coop",
        "--train-templates",
        "first",
        "--iterations",
        "1",
        "-o",
        tmp_path / "p.safetensors",
    )
    assert result.code != 0 and "--train-templates applies to --method lora or full" in result.stderr


# Item 2: ConDU's few-shot draw (ConDU_Ascend/src/models/few_shot_finetune.py:39-52).


def reference_shots(labels: list[int], shots: int, seed: int) -> list[int]:
    """The first `shots` images of each class in the order DataLoader(shuffle=True, generator=g) visits them, classes
    in the order they first appear. Such a loader draws its workers' base seed from g when iterated, and then its
    RandomSampler permutes with g."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(len(labels), generator=generator).tolist()
    few_shot_data: dict[int, list[int]] = {}
    for index in order:
        members = few_shot_data.setdefault(labels[index], [])
        if len(members) < shots:
            members.append(index)
    return [index for members in few_shot_data.values() for index in members]


@pytest.mark.parametrize(("shots", "seed"), [(1, 0), (2, 42), (3, 7)])
def test_few_shot_draw_is_the_first_shots_of_a_seeded_shuffled_loader(eurosat_root, shots, seed):
    from cftool.data import DatasetSpec, load_task

    task = load_task(DatasetSpec("mtil:EuroSAT", shots=shots, seed=seed), eurosat_root)
    labels = list(task.source.labels("train"))
    split = task.split("train")
    assert [index for index, _ in split.items] == reference_shots(labels, shots, seed)
    assert split.labels == [labels[index] for index in reference_shots(labels, shots, seed)]


def test_few_shot_images_are_augmented_once_then_fixed(eurosat_root):
    """few_shot_finetune.py:54-58 stacks the augmented shots and trains on those tensors: the same view every epoch.
    Without --shots, each epoch draws a new view."""
    from cftool.data import DatasetSpec, load_task
    from cftool.data.augment import training_transform
    from cftool.zoo import load_model

    zoo = load_model("tiny")
    augment = training_transform("zscl", zoo)
    shots = load_task(DatasetSpec("mtil:EuroSAT", shots=2, seed=3), eurosat_root).split("train", augment)
    whole = load_task(DatasetSpec("mtil:EuroSAT", seed=3), eurosat_root).split("train", augment)
    unaugmented = load_task(DatasetSpec("mtil:EuroSAT"), eurosat_root).split("train", zoo.preprocess)
    views = []
    for global_seed in (1, 2):  # what the training loop does: a seed of its own for each draw
        torch.manual_seed(global_seed)
        views.append((shots[0][0], whole[0][0]))
    assert torch.equal(views[0][0], views[1][0])
    assert not torch.equal(views[0][1], views[1][1])
    first_shot = shots.items[0][0]
    assert not torch.equal(views[0][0], unaugmented[[index for index, _ in unaugmented.items].index(first_shot)][0])


# Item 3: ConDU's prototypes (ConDU_Ascend/src/models/finetune.py:171-209), from the whole training split through the
# training transform, in few-shot runs too (few_shot_finetune.py:184-222).


def reference_prototypes(zoo, task, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    num_classes = len(task.classnames)
    with torch.no_grad():
        pretrained_image_features = zoo.model.encode_image(images)
        pretrained_image_features /= pretrained_image_features.norm(dim=-1, keepdim=True)
        pretrained_features_sum = torch.zeros(num_classes, pretrained_image_features.shape[1])
        pretrained_features_sum.index_add_(0, labels, pretrained_image_features)
        sample_counts = torch.zeros(num_classes, dtype=torch.int)
        for label in labels:
            sample_counts[label] += 1
        pretrained_proto = []
        for class_label, classname in enumerate(task.classnames):
            texts = zoo.tokenizer([template.format(classname) for template in task.templates])
            pretrained_text_features = zoo.model.encode_text(texts)
            pretrained_text_features /= pretrained_text_features.norm(dim=-1, keepdim=True)
            pretrained_text_feature_avg = pretrained_text_features.mean(dim=0)
            pretrained_image_feature_avg = pretrained_features_sum[class_label] / sample_counts[class_label]
            pretrained_prototype = (pretrained_image_feature_avg + pretrained_text_feature_avg) / 2
            pretrained_prototype /= pretrained_prototype.norm()
            pretrained_proto.append(pretrained_prototype)
    return torch.stack(pretrained_proto)


@pytest.mark.parametrize("shots", [None, 1])
def test_prototypes_are_condus(cli, eurosat_root, tmp_path, shots):
    from cftool.data import DatasetSpec, load_task
    from cftool.data.augment import training_transform
    from cftool.data.specs import PROTOTYPES_STREAM
    from cftool.zoo import load_model

    extra = () if shots is None else ("--shots", shots)
    _finetune(cli, eurosat_root, tmp_path / "full.safetensors", "--seed", 5, *extra)
    with open_checkpoint(tmp_path / "full.prototypes.safetensors") as ckpt:
        prototypes = ckpt["prototypes"]

    zoo = load_model("tiny")
    task = load_task(DatasetSpec("mtil:EuroSAT", seed=5), eurosat_root)
    # The training transform's views of every training image, each drawn as cftool draws it (seeded, reproducible).
    views = task.full_training_split(training_transform("zscl", zoo), draw_stream=PROTOTYPES_STREAM)
    images = torch.stack([views[i][0] for i in range(len(views))])
    assert len(images) == len(task.source.labels("train"))
    expected = reference_prototypes(zoo, task, images, torch.tensor(views.labels))
    torch.testing.assert_close(prototypes, expected, atol=1e-6, rtol=0)
    # The templates' mean is shorter than a unit vector, so the zero-shot head (that mean renormalised) in its place
    # would give other prototypes: the comparison above tells the two apart.
    from cftool.encode.zero_shot import class_text_means

    assert bool((class_text_means(zoo, task.classnames, task.templates).norm(dim=1) < 1 - 1e-4).all())


# Item 5: ZSCL's order II (mtil/scripts/ZSCL_minus.sh:8).


def test_order_two_is_zscls():
    zscl_minus = "StanfordCars Food MNIST OxfordPet Flowers SUN397 Aircraft Caltech101 DTD EuroSAT CIFAR100"
    benchmark = BENCHMARKS["mtil-order2"]
    assert [spec.source for spec in benchmark.tasks] == [f"mtil:{name}" for name in zscl_minus.split()]
    assert benchmark.default_model == BENCHMARKS["mtil"].default_model
    assert {spec.source for spec in benchmark.tasks} == {spec.source for spec in BENCHMARKS["mtil"].tasks}
