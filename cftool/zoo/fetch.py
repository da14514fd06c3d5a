"""Where pretrained weights come from: the local caches first, the network only when it answers.

open_clip downloads on demand, and without a network its downloaders retry for half a minute before failing.
Weights already in a cache are handed to open_clip as local files, so a cached model never touches the network;
weights that are not cached are fetched only after the host has answered within a few seconds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from cftool.errors import CftoolError

HF_HOST = "huggingface.co"
_REACH_TIMEOUT_S = 3.0


def _offline_hint(what: str) -> str:
    return (
        f"{what} are not in the local cache and cannot be downloaded (no network, or HF_HUB_OFFLINE=1 is set); "
        "download them on a machine with a network (they are then cached), or pass a local copy: "
        "--zs ARCH:/path/to/weights.pt, --zs local-dir:/folder/with/open_clip_config.json, or a cftool model file; "
        "--zs tiny is the embedded model"
    )


def _cached_hub_file(repo_id: str, filenames: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_weight_names(filename: str | None) -> tuple[str, ...]:
    """The files open_clip asks the Hub for, in its order: the safetensors alternative first (the rule of its
    private ``pretrained._get_safe_alternatives``, restated rather than imported from a private name)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return HF_SAFE_WEIGHTS_NAME, filename
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


def cached_tag_weights(pretrained_cfg: dict) -> Path | None:
    """The local file open_clip would download for a pretrained tag, if a cache already holds it."""
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # 'org/name/' (trailing slash) means open_clip's default file name
        found = _cached_hub_file(repo_id, _hub_weight_names(filename or None))
        if found is not None:
            return found
    url = pretrained_cfg.get("url", "")
    if url:
        cached = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        if cached.is_file():
            return cached
    return None


def cached_hub_folder(repo_id: str) -> Path | None:
    """The cached snapshot folder of an ``hf-hub:`` model holding its config and weights, usable as local-dir."""
    from open_clip.constants import HF_CONFIG_NAME

    config = _cached_hub_file(repo_id, (HF_CONFIG_NAME,))
    if config is None or _cached_hub_file(repo_id, _hub_weight_names(None)) is None:
        return None
    return config.parent


def ensure_reachable(pretrained_cfg: dict | None, what: str) -> None:
    """Fail in seconds, in one line, where a download could not succeed."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise CftoolError(_offline_hint(what))
    hosts = [HF_HOST]
    if pretrained_cfg and pretrained_cfg.get("url") and not pretrained_cfg.get("hf_hub"):
        hosts = [urlparse(pretrained_cfg["url"]).hostname or HF_HOST]
    for host in hosts:
        try:
            socket.create_connection((host, 443), timeout=_REACH_TIMEOUT_S).close()
        except OSError:
            raise CftoolError(_offline_hint(what)) from None
