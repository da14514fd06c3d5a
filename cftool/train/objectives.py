"""What the training loop minimises: an ``Objective`` is one module holding the method and every term of its loss,
so that under DDP a single wrapped module runs the whole objective and every term's gradient is synchronised.

``CrossEntropy`` is fine-tuning's loss; ``MergeTune`` is DESIGN §5.1's continued fine-tuning objective.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cftool.errors import CftoolError
from cftool.merge.methods import fits_float32
from cftool.train.methods import Method, Solution

ZS_REGULARISERS = ("param", "feature")
DEFAULT_LMC_SAMPLES = tuple(round(0.1 * i, 1) for i in range(1, 11))


class Objective(nn.Module):
    """A loss over a batch of the method's inputs (image features of a frozen tower, or images) and labels."""

    name: str

    def __init__(self, method: Method, label_smoothing: float = 0.0):
        super().__init__()
        self.method = method
        self.label_smoothing = label_smoothing

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


class CrossEntropy(Objective):
    name = "cross-entropy"

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(self.method(inputs), labels)


def parse_lmc_samples(text: str) -> tuple[float, ...]:
    """``--lmc-samples``: a comma-separated list of α in (0, 1], or a count N meaning 1/N, 2/N, …, 1."""
    try:
        if "," not in text and "." not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return tuple(round(i / count, 6) for i in range(1, count + 1))
        samples = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise CftoolError(
            f"--lmc-samples {text!r}: expected α values in (0, 1] separated by commas (e.g. 0.5,1.0) or a count N"
        ) from None
    return samples


@dataclass(frozen=True)
class MergeTuneOptions:
    lambda_lmc: float = 1.0
    lambda_zs: float = 10.0
    zs_reg: str = "feature"
    lmc_samples: tuple[float, ...] = DEFAULT_LMC_SAMPLES

    def __post_init__(self):
        for flag, value in (("--lambda-lmc", self.lambda_lmc), ("--lambda-zs", self.lambda_zs)):
            if not (fits_float32(value) and value >= 0):  # it weighs a float32 loss
                raise CftoolError(
                    f"{flag} must be a finite number ≥ 0 (at most 3.4e38, float32's largest), got {value}"
                )
        if self.zs_reg not in ZS_REGULARISERS:
            raise CftoolError(f"--zs-reg must be one of {', '.join(ZS_REGULARISERS)}, got {self.zs_reg!r}")
        if not self.lmc_samples or not all(0 < alpha <= 1 for alpha in self.lmc_samples):
            raise CftoolError(f"--lmc-samples must be α values in (0, 1], got {list(self.lmc_samples)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lmc_samples": list(self.lmc_samples)}


@dataclass(frozen=True)
class ZeroShotPoint:
    """MergeTune's zero-shot counterpart ŵ1: the parameter point of a freshly built method (the hand-written context,
    the zero-shot head, LoRA = 0, the base weights) and the zero-shot class text features."""

    parameters: Solution
    class_features: torch.Tensor  # [n_classes, embed_dim], normalised

    @classmethod
    def of(cls, method: Method, class_features: torch.Tensor) -> ZeroShotPoint:
        """Capture it from a method that has not been trained or loaded yet."""
        parameters = {name: t.detach().clone() for name, t in method.parameter_point(method.solution()).items()}
        return cls(parameters, class_features.detach().to(method.device))


class MergeTune(Objective):
    """DESIGN §5.1: ``CE(f_w) + λ_lmc · mean_α CE(f_{(1−α)·ŵ2 + α·w}) + λ_zs · R(w, ŵ1)``.

    ŵ2 is the method's solution when the objective is built (the fine-tuned checkpoint, where training starts);
    the path points are interpolated in the method's path space (class features, head weights or weights). The
    α = 1 point is the current model, whose loss is the first term already. ``R`` is ``‖w − ŵ1‖²`` over the
    method's parameter point (``param``) or ``1 − mean_c cos(t_c(w), t_c(ŵ1))`` over class text features
    (``feature``).
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
        if options.zs_reg == "feature" and options.lambda_zs:
            with torch.no_grad():
                method.class_text_features(self.fine_tuned)  # refuses early where text features cannot move

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        current = self.method.solution()
        logits = self.method.logits_at(inputs, current)
        path = self.method.path_logits(inputs, self.fine_tuned, current, self.options.lmc_samples, logits)
        # Every point scores the same batch, so the mean over all of them is the mean over α of each point's loss.
        path_loss = self.cross_entropy(path.flatten(0, 1), labels.repeat(len(self.options.lmc_samples)))
        loss = self.cross_entropy(logits, labels) + self.options.lambda_lmc * path_loss
        if self.options.lambda_zs:
            loss = loss + self.options.lambda_zs * self.zero_shot_distance(current)
        return loss

    def zero_shot_distance(self, current: Solution) -> torch.Tensor:
        if self.options.zs_reg == "param":
            point = self.method.parameter_point(current)
            return sum(((point[name] - self.zero_shot.parameters[name]) ** 2).sum() for name in point)
        features = self.method.class_text_features(current)
        return 1 - F.cosine_similarity(features, self.zero_shot.class_features, dim=-1).mean()
