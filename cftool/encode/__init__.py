"""CLIP forward passes every layer above shares: image features (cached or not), zero-shot heads, text with a learned
context."""
