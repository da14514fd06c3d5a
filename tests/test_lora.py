"""LoRA training keeps each merged weight only inside the layer that uses it: autograd keeps its recipe for backward."""

import gc
import weakref

import torch

import cftool.kinds.lora
from cftool.kinds.apply import build_method
from cftool.zoo import load_model


def _loss_and_gradients(method, images, labels, forward):
    method.zero_grad()
    loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in method.solution().items()}


def test_merged_weights_are_freed_after_forward_rebuilt_in_backward_and_gradients_are_unchanged(monkeypatch):
    torch.manual_seed(0)
    zoo = load_model("tiny", device="cpu")
    # Both towers, attention and MLP (nn.MultiheadAttention reads in_proj_weight itself); condu init so that B ≠ 0
    # and the merged weights differ from the base.
    method = build_method("lora", zoo, ["a", "b", "c"], ["a photo of a {}."], rank=4, alpha=8.0, lora_init="condu")
    images, labels = torch.randn(6, 3, *zoo.model.visual.image_size), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = _loss_and_gradients(method, images, labels, lambda x: super(type(method), method).forward(x))

    merged, merge_lora = [], cftool.kinds.lora.merge_lora

    def spy(*args):
        merged.append(merge_lora(*args))
        return merged[-1]

    monkeypatch.setattr(cftool.kinds.lora, "merge_lora", spy)
    with cftool.kinds.lora.merged_weights_recomputed():
        logits = super(type(method), method).forward(images)
    in_forward = [weakref.ref(weight) for weight in merged]
    merged.clear()
    gc.collect()
    assert len(in_forward) >= len(method.targets)  # a layer may read its weight more than once
    assert all(ref() is None for ref in in_forward)  # autograd kept recipes, not the weights
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert merged  # rebuilt in backward, where a gradient needs them

    recomputed = _loss_and_gradients(method, images, labels, method.forward)  # LoRA's forward recomputes
    assert torch.equal(recomputed[0], plain[0])
    assert all(torch.equal(recomputed[1][name], plain[1][name]) for name in plain[1])
