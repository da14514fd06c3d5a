"""Where pretrained weights come from: the local caches first, the network only when it answers.

open_clip downloads on demand, and without a network its downloaders retry for half a minute before failing.
Weights already in a cache are read from there, so a cached model never touches the network; weights that are not
cached are downloaded (by open_clip's and huggingface_hub's downloaders) only after the host has answered within a
few seconds. Either way cftool reads the file itself.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from cftool.errors import CftoolError

HF_HOST = "huggingface.co"
_REACH_TIMEOUT_S = 3.0
_LOCAL_COPY_HINT = (
    "pass a local copy: --zs ARCH:/path/to/weights.pt, --zs local-dir:/folder/with/open_clip_config.json, or a "
    "cftool model file; --zs tiny is the embedded model"
)


def _offline_hint(what: str) -> str:
    return (
        f"{what} are not in the local cache and cannot be downloaded (no network, or HF_HUB_OFFLINE=1 is set); "
        f"download them on a machine with a network (they are then cached), or {_LOCAL_COPY_HINT}"
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


def cached_hub_files(repo_id: str) -> tuple[Path | None, Path | None]:
    """The cached config and weights files of an ``hf-hub:`` model (None for each not in the cache)."""
    from open_clip.constants import HF_CONFIG_NAME

    return _cached_hub_file(repo_id, (HF_CONFIG_NAME,)), _cached_hub_file(repo_id, _hub_weight_names(None))


def download_hub_files(repo_id: str) -> tuple[Path, Path]:
    """Download the config and weights of an ``hf-hub:`` model, as open_clip would (safetensors first)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from open_clip.constants import HF_CONFIG_NAME

    names = _hub_weight_names(None)
    try:
        config = Path(hf_hub_download(repo_id, HF_CONFIG_NAME))
        for name in names:
            try:
                return config, Path(hf_hub_download(repo_id, name))
            except EntryNotFoundError:
                continue
    except Exception as exc:  # huggingface_hub reports missing repositories and network failures in many types
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CftoolError(f"--zs hf-hub:{repo_id}: cannot download it ({detail}); check the name") from None
    raise CftoolError(
        f"--zs hf-hub:{repo_id}: the repository has no open_clip weights ({' or '.join(names)}); "
        "name an open_clip model, or pass local weights: --zs ARCH:/path/to/weights.pt"
    )


def download_tag_weights(pretrained_cfg: dict, what: str) -> Path:
    """Download the weights of a pretrained tag into open_clip's cache; cftool reads them itself."""
    import open_clip

    try:
        downloaded = open_clip.download_pretrained(pretrained_cfg)
    except Exception as exc:  # open_clip and its downloaders report failures in many types
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CftoolError(f"{what}: cannot download them ({detail}); {_LOCAL_COPY_HINT}") from None
    if not downloaded:
        raise CftoolError(f"{what}: open_clip names no file to download for this tag; {_LOCAL_COPY_HINT}")
    return Path(downloaded)


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
