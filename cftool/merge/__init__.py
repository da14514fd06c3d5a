"""Checkpoint arithmetic on tensors: needs only `cftool.io` and torch, never open_clip."""
