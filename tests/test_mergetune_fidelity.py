"""MergeTune's formulas against the official code (Surrey-UP-Lab/MERGETUNE, mergetune/trainers/kgcoop_coop_LMC.py),
each written out here by hand from that file's logic and compared with cftool's to 1e-6: the α grid (:509), the path
logits over unnormalised text-encoder outputs (:512-519, :397-410), the cosine and L2 zero-shot losses (:384-393),
the whole loss (:534-552) and KgCoOp's anchor templates (:52-68, :149-157)."""

import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import one_line_error
from test_coop_datasets import write_split_file

from cftool.data import DatasetSpec, load_task
from cftool.data.coop import CUSTOM_TEMPLATES, KGCOOP_TEMPLATES, CoopSource
from cftool.data.specs import TaskData
from cftool.encode.text import embedded_context
from cftool.eval.lmc_paths import endpoints, evaluate_path
from cftool.io.checkpoint import open_checkpoint, save_checkpoint
from cftool.kinds.method import zero_shot_class_features
from cftool.kinds.prompt import CoOp
from cftool.options import REFERENCE_LMC_COUNT
from cftool.train.objectives import MergeTune, MergeTuneOptions, ZeroShotPoint, parse_lmc_samples
from cftool.zoo import load_model

CLASSES = ["banded", "blotchy", "braided"]
DTD_ANCHOR = "a photo of a {}, a type of texture."
# Two 4-token contexts written as words, so that the reference's text features are open_clip's own encode_text of
# the prompts they spell: the fine-tuned end (CoOp's prompt_learner) and the current one (prompt_mid_learner).
FINE_TUNED_WORDS, CURRENT_WORDS = "a photo of a", "an image of the"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_path_samples_are_the_references_arange():
    for count in range(1, 13):  # TRAINER.COOP.NUM_SAMPLES
        reference = np.arange(0.1, 1.01, 1.0 / float(count))
        assert len(parse_lmc_samples(str(count))) == len(reference)
        assert np.allclose(parse_lmc_samples(str(count)), reference, atol=1e-6, rtol=0)
    # The official run: NUM_SAMPLES = 5 (base2new_train_coop.sh), so α = 1 is not a sample.
    expected = np.arange(0.1, 1.01, 1.0 / 5.0)
    assert np.allclose(MergeTuneOptions().lmc_samples, expected, atol=1e-6, rtol=0)
    assert MergeTuneOptions().lmc_samples == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert parse_lmc_samples(str(REFERENCE_LMC_COUNT)) == MergeTuneOptions().lmc_samples  # `continue`'s default


def _reference_text_features(model, tokenizer, words: str, classnames: list[str]) -> torch.Tensor:
    """The reference's TextEncoder output for the context ``words``: the unnormalised text feature of the prompt
    ``"<words> <class>."`` (what CLIP's encode_text gives for the prompt the context spells)."""
    with torch.no_grad():
        return model.encode_text(tokenizer([f"{words} {name}." for name in classnames]), normalize=False)


def _prompts_and_zero_shot(zs_loss: str, lmc_samples=(0.1, 0.3, 0.5, 0.7, 0.9), lambda_lmc=1.0, lambda_zs=10.0):
    """A CoOp prompt in float64 at the current context, its MergeTune objective from the fine-tuned context, and the
    reference's tensors for the same case."""
    zoo = load_model("tiny")
    zoo.model.double()
    method = CoOp(zoo, CLASSES, [DTD_ANCHOR])
    zero_shot = ZeroShotPoint.of(method, zero_shot_class_features(zoo, CLASSES, [DTD_ANCHOR]))
    with torch.no_grad():
        method.ctx.copy_(embedded_context(zoo.model, zoo.tokenizer, FINE_TUNED_WORDS))
    options = MergeTuneOptions(lambda_lmc, lambda_zs, "feature", lmc_samples, zs_loss)
    objective = MergeTune(method, zero_shot, options)  # ŵ2: the fine-tuned context
    with torch.no_grad():
        method.ctx.copy_(embedded_context(zoo.model, zoo.tokenizer, CURRENT_WORDS))
    feature_start = _reference_text_features(zoo.model, zoo.tokenizer, FINE_TUNED_WORDS, CLASSES)
    feature_end = _reference_text_features(zoo.model, zoo.tokenizer, CURRENT_WORDS, CLASSES)
    with torch.no_grad():  # PromptLearner.text_features: CLIP's encode_text of KgCoOp's template, normalised
        anchor = zoo.model.encode_text(zoo.tokenizer([DTD_ANCHOR.format(c) for c in CLASSES]))
        anchor = anchor / anchor.norm(dim=-1, keepdim=True)
    generator = torch.Generator().manual_seed(0)
    raw_images = torch.randn(6, feature_end.shape[1], generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 0, 1])
    reference = {"start": feature_start, "end": feature_end, "anchor": anchor, "raw_images": raw_images}
    return zoo, method, objective, reference, labels


def _reference_logits(logit_scale, raw_images, text_features):
    """CustomCLIP.forward (:404-408): both sides normalised, scaled by exp(logit_scale)."""
    image_features = raw_images / raw_images.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return logit_scale.exp() * image_features @ text_features.t()


def test_the_path_logits_interpolate_unnormalised_text_features_as_the_reference():
    zoo, method, objective, ref, _ = _prompts_and_zero_shot("cosine")
    alphas = (0.1, 0.3, 0.5, 0.7, 0.9)
    images = F.normalize(ref["raw_images"], dim=-1)
    with torch.no_grad():
        current = method.solution()
        path = method.path_logits(images, objective.fine_tuned, current, alphas, method.logits_at(images, current))
        for index, t in enumerate(alphas):
            feature_mid = ref["start"] + (ref["end"] - ref["start"]) * t  # :517
            expected = _reference_logits(zoo.model.logit_scale, ref["raw_images"], feature_mid)
            assert torch.allclose(path[index], expected, atol=1e-6, rtol=0)
        # The two ends' norms differ, so interpolating unit features (cftool's old path) would be another path.
        assert not torch.allclose(ref["start"].norm(dim=-1), ref["end"].norm(dim=-1), atol=1e-3)
        unit = F.normalize(torch.lerp(F.normalize(ref["start"], dim=-1), F.normalize(ref["end"], dim=-1), 0.5), dim=-1)
        assert (path[2] - zoo.model.logit_scale.exp() * images @ unit.T).abs().max() > 1e-4


@pytest.mark.parametrize("zs_loss", ["cosine", "l2"])
def test_the_zero_shot_losses_and_the_whole_objective_equal_the_reference(zs_loss):
    zoo, method, objective, ref, labels = _prompts_and_zero_shot(zs_loss, lambda_lmc=1.0, lambda_zs=8.0)
    text_features = ref["end"] / ref["end"].norm(dim=-1, keepdim=True)
    if zs_loss == "cosine":  # :386-389
        score = 1.0 - torch.mean(F.cosine_similarity(text_features, ref["anchor"], dim=1, eps=1e-07))
    else:  # :391-393, unsquared
        score = torch.mean(torch.norm(text_features - ref["anchor"], p=2, dim=1))
    logits = _reference_logits(zoo.model.logit_scale, ref["raw_images"], ref["end"])
    loss_main_clip = F.cross_entropy(logits, labels) + 8.0 * score  # :504, W = 8.0
    total_loss_lmc = 0
    line_samples = np.arange(0.1, 1.01, 1.0 / 5.0)
    for t in line_samples:
        output_lmc = _reference_logits(
            zoo.model.logit_scale, ref["raw_images"], ref["start"] + (ref["end"] - ref["start"]) * t
        )
        total_loss_lmc += F.cross_entropy(output_lmc, labels) / len(line_samples)
    expected = loss_main_clip + 1.0 * total_loss_lmc  # :523, W_LMC = 1.0

    with torch.no_grad():
        distance = objective.zero_shot_distance(method.solution())
        loss = objective(F.normalize(ref["raw_images"], dim=-1), labels)
    assert torch.allclose(distance, score, atol=1e-6, rtol=0)
    assert abs(loss.item() - expected.item()) < 1e-6 * max(1.0, abs(expected.item()))


def test_the_l2_loss_goes_with_the_feature_surrogate_only(cli):
    with pytest.raises(Exception, match="--zs-loss l2 compares class text features"):
        MergeTuneOptions(zs_reg="param", zs_loss="l2")
    result = cli("continue", "missing.safetensors", "--zs", "tiny", "--zs-loss", "squared")
    assert result.code == 2 and "'squared' is not one of 'cosine', 'l2'" in one_line_error(result)


def test_the_anchor_templates_are_kgcoops_for_every_dataset():
    # KgCoOp's CUSTOM_TEMPLATES as kgcoop_coop_LMC.py:52-68 writes them (and trainers/kgcoop.py:37-54).
    kgcoop = {
        "OxfordPets": "a photo of a {}, a type of pet.",
        "OxfordFlowers": "a photo of a {}, a type of flower.",
        "FGVCAircraft": "a photo of a {}, a type of aircraft.",
        "DescribableTextures": "a photo of a {}, a type of texture.",
        "EuroSAT": "a centered satellite photo of {}.",
        "StanfordCars": "a photo of a {}.",
        "Food101": "a photo of {}, a type of food.",
        "SUN397": "a photo of a {}.",
        "Caltech101": "a photo of a {}.",
        "UCF101": "a photo of a person doing {}.",
        "ImageNet": "a photo of a {}.",
        "ImageNetSketch": "a photo of a {}.",
        "ImageNetV2": "a photo of a {}.",
        "ImageNetA": "a photo of a {}.",
        "ImageNetR": "a photo of a {}.",
    }
    assert KGCOOP_TEMPLATES == kgcoop
    assert {name for name in kgcoop if kgcoop[name] != CUSTOM_TEMPLATES[name]} == {"DescribableTextures"}
    task = TaskData(DatasetSpec("coop:dtd"), CoopSource("DescribableTextures", CLASSES, {}), [0, 1, 2])
    assert task.templates == ["{} texture."]  # evaluation: zsclip.py:17
    assert task.anchor_templates(task.templates) == [DTD_ANCHOR]


def test_continue_on_dtd_anchors_on_kgcoops_template_and_records_the_reference_path_samples(cli, tmp_path, monkeypatch):
    write_split_file(
        tmp_path / "dtd",
        "DescribableTextures",
        "images",
        [(f"{name}/{name}_{{split}}{{i}}.jpg", name) for name in CLASSES],
    )
    coop = tmp_path / "coop.safetensors"
    data = ["--zs", "tiny", "--data", "coop:dtd", "--data-root", tmp_path, "--device", "cpu"]
    result = cli("finetune", *data, "--method", "coop", "--batch-size", "6", "--iterations", "2", "-o", coop)
    assert result.code == 0, result.stderr

    encoded = []
    finetune_module = importlib.import_module("cftool.train.finetune")  # the package exports a function of that name
    original = finetune_module.class_text_means
    monkeypatch.setattr(
        finetune_module,
        "class_text_means",
        lambda zoo, classnames, templates: encoded.append(list(templates)) or original(zoo, classnames, templates),
    )
    result = cli("continue", coop, "--zs", "tiny", "--iterations", "1", "--json")  # the spelling
    assert result.code == 0, result.stderr
    output = tmp_path / "coop.mergetune.safetensors"
    assert json.loads(result.stdout)["output"] == str(output)
    assert encoded == [["{} texture."], [DTD_ANCHOR]]  # the task's templates (prototypes), then the anchor
    with open_checkpoint(output) as ckpt:
        config = ckpt.header.config
    assert config["mergetune"]["lmc_samples"] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert config["mergetune"]["zs_loss"] == "cosine"
    assert config["mergetune"]["anchor_templates"] == [DTD_ANCHOR]
    assert config["templates"] == ["{} texture."]


class _FixedFeatures:
    """A feature cache that holds the same image features for every task and split."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def get(self, task, split, base_weights):
        return self.features, self.labels


def test_eval_path_between_two_prompts_runs_over_unnormalised_text_features(cli, tmp_path):
    """`eval --path A B` of two prompts takes the same path as the continuation: the reference's interpolation of
    the text encoder's outputs, normalised afterwards."""
    trained = tmp_path / "trained.safetensors"
    args = ["--zs", "tiny", "--data", "toy:mnist", "--classes", "base", "--shots", "2", "--device", "cpu"]
    assert cli("finetune", *args, "--method", "coop", "--iterations", "1", "-o", trained).code == 0
    zoo = load_model("tiny")
    ends = {}
    with open_checkpoint(trained) as ckpt:
        for words in (FINE_TUNED_WORDS, CURRENT_WORDS):
            ctx = embedded_context(zoo.model, zoo.tokenizer, words)
            ends[words] = save_checkpoint(tmp_path / f"{words}.safetensors", {"ctx": ctx}, ckpt.header)
    task = load_task(DatasetSpec("toy:mnist", classes="base"))
    generator = torch.Generator().manual_seed(2)
    features = F.normalize(torch.randn(8, zoo.model.text_projection.shape[1], generator=generator), dim=-1)
    labels = torch.arange(8) % len(task.classnames)
    a, b, kind = endpoints(str(ends[FINE_TUNED_WORDS]), str(ends[CURRENT_WORDS]), zoo.weights_sha256, None)
    alphas = [0.0, 0.3, 1.0]
    (curve,) = evaluate_path(zoo, a, b, kind, [task], alphas, "test", _FixedFeatures(features, labels))

    start = _reference_text_features(zoo.model, zoo.tokenizer, FINE_TUNED_WORDS, task.classnames)
    end = _reference_text_features(zoo.model, zoo.tokenizer, CURRENT_WORDS, task.classnames)
    for alpha, loss in zip(alphas, curve.loss, strict=True):
        point = start + (end - start) * alpha
        logits = zoo.model.logit_scale.exp() * features @ (point / point.norm(dim=-1, keepdim=True)).t()
        assert abs(loss - F.cross_entropy(logits, labels).item()) < 1e-6
