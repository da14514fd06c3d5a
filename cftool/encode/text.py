"""Text-side features for training: class prompts with learned context (CoOp) and differentiable class heads.

``encode_text_with_context`` is open_clip's ``CLIP.encode_text`` with the token embeddings at positions
``1..n_ctx`` replaced by learned vectors, as CoOp's TextEncoder does; given the embedded tokens of the
words it replaces, it reproduces ``encode_text`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

# The word each learned context vector stands in for when prompts are tokenised; replaced before the transformer.
CONTEXT_PLACEHOLDER = "X"


def context_prompts(classnames: Sequence[str], n_ctx: int) -> list[str]:
    """CoOp's prompts with the class token at the end: ``X X … X classname.``"""
    prefix = " ".join([CONTEXT_PLACEHOLDER] * n_ctx)
    return [f"{prefix} {name}." for name in classnames]


def encode_text_with_context(model: open_clip.CLIP, tokens: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """Unnormalised text features of ``tokens`` [n, L], positions 1..n_ctx replaced by ``ctx``: one context
    [n_ctx, width] shared by all prompts, or class-specific context [n, n_ctx, width] (CoOp's CSC), one per prompt."""
    cast_dtype = model.transformer.get_cast_dtype()
    embedded = model.token_embedding(tokens).to(cast_dtype)
    n_ctx = ctx.shape[-2]
    per_prompt = ctx if ctx.dim() == 3 else ctx.unsqueeze(0).expand(len(tokens), -1, -1)
    x = torch.cat([embedded[:, :1], per_prompt.to(cast_dtype), embedded[:, 1 + n_ctx :]], dim=1)
    x = x + model.positional_embedding.to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


def embedded_context(model: open_clip.CLIP, tokenizer: Callable, words: str) -> torch.Tensor:
    """Token embeddings [n_words_tokens, width] of ``words`` (no start/end tokens): CoOp's context initialisation."""
    tokens = tokenizer([words])[0]
    length = int(tokens.argmax()) - 1  # the end-of-text token has the largest id
    device = model.token_embedding.weight.device
    with torch.no_grad():
        return model.token_embedding(tokens[1 : 1 + length].to(device)).float()


def template_tokens(tokenizer: Callable, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Tokens [n_classes × n_templates, L], class-major, as ``class_text_head`` expects them."""
    return tokenizer([template.format(name) for name in classnames for template in templates])


def class_text_head(model: open_clip.CLIP, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """[n_classes, embed_dim] normalised mean of normalised template features, with gradients (unlike
    ``open_clip.build_zero_shot_classifier``, which computes the same thing under ``no_grad``)."""
    return mean_per_class(model.encode_text(tokens, normalize=True), n_classes)


def mean_per_class(template_features: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Normalised mean over each class's templates of class-major features [n_classes × n_templates, embed_dim]."""
    return F.normalize(
        template_features.reshape(n_classes, len(template_features) // n_classes, -1).mean(dim=1), dim=-1
    )
