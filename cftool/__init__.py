"""cftool: checkpoint surgery for CLIP-style vision-language models (MergeTune, ConDU)."""

__version__ = "0.1.0"
