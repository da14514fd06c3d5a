"""What the training loop minimises: an ``Objective`` is one module holding the method and every term of its loss,
so that under DDP a single wrapped module runs the whole objective and every term's gradient is synchronised.

``CrossEntropy`` is fine-tuning's loss; ``MergeTune`` is docs/design.md §5.1's continued fine-tuning objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cftool.errors import CftoolError
from cftool.kinds.method import Method, Solution
from cftool.merge.precision import fits_float32
from cftool.options import (
    LAMBDA_LMC,
    LAMBDA_ZS,
    REFERENCE_LMC_COUNT,
    ZS_COSINE,
    ZS_FEATURE,
    ZS_L2,
    ZS_LOSS,
    ZS_LOSSES,
    ZS_PARAM,
    ZS_REGULARISER,
    ZS_REGULARISERS,
)

# Where the reference's α grid of REFERENCE_LMC_COUNT (its NUM_SAMPLES) samples starts and stops:
# ``np.arange(0.1, 1.01, 1 / NUM_SAMPLES)`` (trainers/kgcoop_coop_LMC.py:509 and :538).
_GRID_START, _GRID_STOP = 0.1, 1.01


class Objective(nn.Module):
    """A loss over a batch of the method's inputs (image features of a frozen tower, or images) and labels.

    ``terms`` holds, after each forward, every term of the last loss by name, unweighted and detached (for the run's
    metrics: a curve per term); the loss is their sum weighted as the objective's docstring says."""

    name: str

    def __init__(self, method: Method, label_smoothing: float = 0.0):
        super().__init__()
        self.method = method
        self.label_smoothing = label_smoothing
        self.terms: dict[str, torch.Tensor] = {}

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def parts(self, inputs: torch.Tensor, labels: torch.Tensor) -> Iterator[torch.Tensor]:
        """The loss as parts whose gradients add up to its gradient, for a caller that backpropagates each part before
        asking for the next, so that one part's activations are freed before the next part's exist. One part here."""
        yield self(inputs, labels)


class CrossEntropy(Objective):
    name = "cross-entropy"

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.cross_entropy(self.method(inputs), labels)
        self.terms = {"ce": loss.detach()}
        return loss


def reference_lmc_samples(count: int) -> tuple[float, ...]:
    """The reference's α grid for NUM_SAMPLES = ``count``: ``np.arange(0.1, 1.01, 1/count)``, i.e. 0.1, 0.1 + 1/N,
    … while below 1.01 (5 → 0.1, 0.3, 0.5, 0.7, 0.9: α = 1, the current model, is not a path sample; 10 → 0.1 … 1.0).
    numpy's length ``ceil((stop − start) / step)`` and values ``start + k·step``, rounded to 6 places."""
    step = 1.0 / count
    return tuple(round(_GRID_START + k * step, 6) for k in range(math.ceil((_GRID_STOP - _GRID_START) / step)))


DEFAULT_LMC_SAMPLES = reference_lmc_samples(REFERENCE_LMC_COUNT)


def parse_lmc_samples(text: str) -> tuple[float, ...]:
    """``--lmc-samples``: a comma-separated list of α in (0, 1], or a count N, the reference's NUM_SAMPLES
    (``reference_lmc_samples``)."""
    try:
        if "," not in text and "." not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return reference_lmc_samples(count)
        samples = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise CftoolError(
            f"--lmc-samples {text!r}: expected α values in (0, 1] separated by commas (e.g. 0.5,1.0) or a count N"
        ) from None
    return samples


@dataclass(frozen=True)
class MergeTuneOptions:
    lambda_lmc: float = LAMBDA_LMC
    lambda_zs: float = LAMBDA_ZS
    zs_reg: str = ZS_REGULARISER
    lmc_samples: tuple[float, ...] = DEFAULT_LMC_SAMPLES
    zs_loss: str = ZS_LOSS  # the feature surrogate's comparison (ZS_LOSSES); the parameter surrogate has its own

    def __post_init__(self):
        for flag, value in (("--lambda-lmc", self.lambda_lmc), ("--lambda-zs", self.lambda_zs)):
            if not (fits_float32(value) and value >= 0):  # it weighs a float32 loss
                raise CftoolError(
                    f"{flag} must be a finite number ≥ 0 (at most 3.4e38, float32's largest), got {value}"
                )
        if self.zs_reg not in ZS_REGULARISERS:
            raise CftoolError(f"--zs-reg must be one of {', '.join(ZS_REGULARISERS)}, got {self.zs_reg!r}")
        if self.zs_loss not in ZS_LOSSES:
            raise CftoolError(f"--zs-loss must be one of {', '.join(ZS_LOSSES)}, got {self.zs_loss!r}")
        if self.zs_reg == ZS_PARAM and self.zs_loss != ZS_COSINE:
            raise CftoolError(
                f"--zs-loss {self.zs_loss} compares class text features, but --zs-reg {ZS_PARAM} measures ‖w − ŵ1‖²; "
                f"use --zs-reg {ZS_FEATURE} with it"
            )
        if not self.lmc_samples or not all(0 < alpha <= 1 for alpha in self.lmc_samples):
            raise CftoolError(f"--lmc-samples must be α values in (0, 1], got {list(self.lmc_samples)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lmc_samples": list(self.lmc_samples)}


@dataclass(frozen=True)
class ZeroShotPoint:
    """MergeTune's zero-shot counterpart ŵ1: the parameter point of a freshly built method (the hand-written context,
    the zero-shot head, LoRA = 0, the base weights) and the zero-shot class text features of the task's anchor
    templates (``TaskData.anchor_templates``: KgCoOp's template for `coop:` data, as the reference builds them)."""

    parameters: Solution
    class_features: torch.Tensor  # [n_classes, embed_dim], normalised

    @classmethod
    def of(cls, method: Method, class_features: torch.Tensor) -> ZeroShotPoint:
        """Capture it from a method that has not been trained or loaded yet."""
        parameters = {name: t.detach().clone() for name, t in method.current_parameter_point().items()}
        return cls(parameters, class_features.detach().to(method.device))


class MergeTune(Objective):
    """docs/design.md §5.1: ``CE(f_w) + λ_lmc · mean_α CE(f_{(1−α)·ŵ2 + α·w}) + λ_zs · R(w, ŵ1)``, the loss of
    MergeTune's ``forward_backward`` (trainers/kgcoop_coop_LMC.py:534-552: W · score + W_LMC · the mean path loss).

    ŵ2 is the method's solution when the objective is built (the fine-tuned checkpoint, where training starts);
    the path points are interpolated in the method's path space (a prompt's unnormalised class text features,
    normalised after interpolating as the reference does at :517 and :405; head weights; or weights). An α = 1
    point is the current model, whose loss is the first term already. ``R`` is ``‖w − ŵ1‖²`` over the method's
    parameter point (``param``) or, over the normalised class text features ``t̂_c`` (``feature``), KgCoOp's
    ``1 − mean_c cos(t̂_c(w), t̂_c(ŵ1))`` (``cosine``) or ``mean_c ‖t̂_c(w) − t̂_c(ŵ1)‖₂``, unsquared (``l2``)
    (:385-393).
    """

    name = "mergetune"

    def __init__(
        self, method: Method, zero_shot: ZeroShotPoint, options: MergeTuneOptions, label_smoothing: float = 0.0
    ):
        super().__init__(method, label_smoothing)
        self.options = options
        self.zero_shot = zero_shot
        with torch.no_grad():
            # Plain attributes rather than buffers: DDP would broadcast buffers at every step, and these never change.
            self.fine_tuned = {name: t.detach().clone() for name, t in method.solution().items()}
        if options.zs_reg == ZS_FEATURE and options.lambda_zs:
            with torch.no_grad():
                method.class_text_features(self.fine_tuned)  # refuses early where text features cannot move

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._loss_at(inputs, labels, self.method.solution())

    def _loss_at(self, inputs: torch.Tensor, labels: torch.Tensor, current: Solution) -> torch.Tensor:
        logits = self.method.logits_at(inputs, current)
        path = self.method.path_logits(inputs, self.fine_tuned, current, self.options.lmc_samples, logits)
        # Every point scores the same batch, so the mean over all of them is the mean over α of each point's loss.
        path_loss = self.cross_entropy(path.flatten(0, 1), labels.repeat(len(self.options.lmc_samples)))
        ce = self.cross_entropy(logits, labels)
        loss = ce + self.options.lambda_lmc * path_loss
        self.terms = {"ce": ce.detach(), "lmc": path_loss.detach()}
        if self.options.lambda_zs:
            distance = self.zero_shot_distance(current)
            loss = loss + self.options.lambda_zs * distance
            self.terms["zs"] = distance.detach()
        return loss

    def parts(self, inputs: torch.Tensor, labels: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each path point's weighted loss, then the rest: where the solution is the trained parameters themselves
        (LoRA factors, weights, a head), every path point is a forward of its own that shares no graph with the others,
        and backpropagating it at once keeps one point's activations alive at a time instead of all of them (ViT-B/16:
        about 1.5 GB per point at batch 8). A prompt's solution is computed (its class text features), one graph that
        every point shares: it stays one part. The α = 1 point is the current model: its loss joins the first term's."""
        current = self.method.solution()
        if not all(tensor.is_leaf for tensor in current.values()):
            yield self._loss_at(inputs, labels, current)  # a prompt's solution is one text encoding: made once
            return
        samples, weight = self.options.lmc_samples, self.options.lambda_lmc / len(self.options.lmc_samples)
        path_losses = []
        for alpha in samples:
            if alpha != 1:
                logits = self.method.path_logits(inputs, self.fine_tuned, current, [alpha], None)[0]
                path_losses.append(self.cross_entropy(logits, labels))
                yield weight * path_losses[-1]
                path_losses[-1] = path_losses[-1].detach()
        ce = self.cross_entropy(self.method.logits_at(inputs, current), labels)
        current_points = len(samples) - len(path_losses)
        last = (1 + weight * current_points) * ce
        self.terms = {"ce": ce.detach(), "lmc": torch.stack([*path_losses, *[ce.detach()] * current_points]).mean()}
        if self.options.lambda_zs:
            distance = self.zero_shot_distance(current)
            last = last + self.options.lambda_zs * distance
            self.terms["zs"] = distance.detach()
        yield last

    def zero_shot_distance(self, current: Solution) -> torch.Tensor:
        if self.options.zs_reg == ZS_PARAM:
            return self.method.squared_distance(self.method.parameter_point(current), self.zero_shot.parameters)
        features, anchor = self.method.class_text_features(current), self.zero_shot.class_features
        if self.options.zs_loss == ZS_L2:
            return torch.linalg.vector_norm(features - anchor, dim=-1).mean()
        return 1 - F.cosine_similarity(features, anchor, dim=-1).mean()
