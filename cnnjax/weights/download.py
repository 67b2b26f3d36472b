"""Reading, downloading and caching torchvision checkpoints: :func:`load_torchvision`.

Files are torchvision's checkpoints (``torch.save``-d state dicts; URLs from the architectures'
:class:`~cnnjax.models.WeightsRecord`: ``IMAGENET1K_V1`` unless ``weights=`` names another enum, e.g.
``IMAGENET1K_V2`` or ``DEFAULT``). Each enum has its own file name (``resnet50-0676ba61.pth`` for V1,
``resnet50-11ad3fa6.pth`` for V2), so the enums of one architecture never share a cache file. The cache directory is
``cache_dir`` if given, else ``$CNNJAX_CACHE/torchvision`` if that variable is set, else
``~/.cache/cnnjax/torchvision``. Downloads go to a ``<name>.*.part`` temporary file in the cache directory and are
renamed into place only after the SHA-256 check: the file name carries a prefix of the file's SHA-256 (the hex
digits after the last ``-``, torch.hub's convention, e.g. ``resnet18-f37072fd.pth``), so a corrupted or truncated
download never enters the cache.

Reading a ``.pth`` needs torch (``torch.load(..., weights_only=True)``); without torch, convert it once
elsewhere with :func:`export_npz` and use the ``.npz`` (placed next to where the ``.pth`` would be in the cache,
it is picked up automatically).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cnnjax.weights.torchvision import TORCHVISION_ARCHS, _to_numpy, check_arch, from_torchvision, weights_record

V1 = "IMAGENET1K_V1"


def _entry(arch: str, weights: str = V1) -> dict[str, Any]:
    """``{'url', 'resize', 'crop', 'interpolation', 'mean', 'std'}`` of ``arch``'s torchvision ``weights``
    (an enum name or ``DEFAULT``), from its record (:class:`cnnjax.models.WeightsRecord`)."""
    w = weights_record(arch, weights)
    return dict(url=w.url, **w.transform.as_dict())


# what load_torchvision downloads by default, IMAGENET1K_V1 (tests redirect an entry)
_INFO: dict[str, dict[str, Any]] = {arch: _entry(arch) for arch in TORCHVISION_ARCHS}


def _info(arch: str, weights: str = V1) -> dict[str, Any]:
    """``_INFO[arch]`` for IMAGENET1K_V1, else (another enum, or an architecture registered after this module
    was imported) the record's entry."""
    return _INFO[arch] if weights == V1 and arch in _INFO else _entry(arch, weights)


class WeightsUnavailableError(RuntimeError):
    """A checkpoint is neither on disk nor downloadable (offline, unreachable URL, HTTP error)."""


class ChecksumError(ValueError):
    """A downloaded file's SHA-256 does not start with the prefix in its file name."""


def torchvision_info(arch: str, weights: str = V1) -> dict[str, Any]:
    """``{'url', 'filename', 'sha256_prefix', 'resize', 'crop', 'interpolation', 'mean', 'std'}`` of
    ``arch``'s torchvision ``weights`` (enum name, default IMAGENET1K_V1; from its
    :class:`~cnnjax.models.WeightsRecord`)."""
    check_arch(arch)
    info = dict(_info(arch, weights))
    info["filename"] = _filename(info["url"])
    info["sha256_prefix"] = sha256_prefix(info["filename"])
    return info


def get_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """``path`` if given, else ``$CNNJAX_CACHE/torchvision``, else ``~/.cache/cnnjax/torchvision``."""
    if path is not None:
        return Path(path).expanduser()
    root = os.environ.get("CNNJAX_CACHE")
    return Path(root).expanduser() / "torchvision" if root else Path.home() / ".cache" / "cnnjax" / "torchvision"


def sha256_prefix(filename: str) -> str | None:
    """The hex digits after the last ``-`` of the file's stem (torch.hub's check_hash convention), or None."""
    stem = Path(filename).name.split(".")[0]
    if "-" not in stem:
        return None
    tail = stem.rsplit("-", 1)[1]
    return tail if re.fullmatch(r"[0-9a-f]{6,64}", tail) else None


def _filename(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"cannot tell a file name from URL {url!r}")
    return name


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(str(text)).scheme in ("http", "https", "ftp", "file")


def download(url: str, dest: str | os.PathLike, *, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically: stream into a ``.part`` file beside it, check the SHA-256
    prefix from the file name (if it has one), then rename. On any failure no file is left behind:
    :class:`WeightsUnavailableError` when the URL cannot be fetched, :class:`ChecksumError` on a hash
    mismatch."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = sha256_prefix(_filename(url))
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = response.headers.get("Content-Length")
                    total = int(total) if total and total.isdigit() else None
                    size = 0
                    bar = _progress(total, dest.name, progress)
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
                    bar.close()
            except (urllib.error.URLError, OSError) as err:  # offline, DNS, refused, HTTP error, timeout
                reason = (f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError)
                          else getattr(err, "reason", err))
                raise WeightsUnavailableError(
                    f"could not download {url} ({reason}). If this machine is offline, download the file "
                    f"elsewhere and place it at {dest} (or pass its path as path_or_url)") from err
        if total is not None and size != total:
            raise WeightsUnavailableError(f"download of {url} was truncated ({size} of {total} bytes); "
                                          "nothing was written to the cache")
        if expected is not None and not digest.hexdigest().startswith(expected):
            raise ChecksumError(f"SHA-256 of the file downloaded from {url} is {digest.hexdigest()}, which does not "
                                f"start with {expected!r} (from its name): corrupted or wrong file; it was "
                                "discarded and nothing was written to the cache")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not enabled, leave=False)


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from a ``.npz`` (NumPy only, as written by :func:`export_npz`) or a ``torch.save`` file
    (``.pth``/``.pt``; needs torch: ``torch.load(path, map_location='cpu', weights_only=True)``). A checkpoint
    wrapping its weights in ``{'state_dict': ...}`` or ``{'model': ...}`` is unwrapped."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading the PyTorch checkpoint {path} needs torch (pip install 'cnnjax[torch]', or "
                          "the CPU build of torch). Without torch, convert it once on a machine that has it with "
                          "cnnjax.weights.export_npz(path) and load the resulting .npz") from err
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def export_npz(state_dict_or_path: Mapping[str, Any] | str | os.PathLike,
               out_path: str | os.PathLike | None = None) -> Path:
    """Save a torchvision state dict (a mapping, or a ``.pth`` path read with torch) as an ``.npz`` of NumPy
    arrays under the same keys, which :func:`read_state_dict` / :func:`load_torchvision` read without torch.
    ``out_path`` defaults to the ``.pth`` path with suffix ``.npz`` (required when passing a mapping)."""
    if isinstance(state_dict_or_path, Mapping):
        if out_path is None:
            raise ValueError("out_path is required when exporting a state dict mapping")
        state = state_dict_or_path
    else:
        state = read_state_dict(state_dict_or_path)
        out_path = out_path if out_path is not None else Path(state_dict_or_path).with_suffix(".npz")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".part", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{key: _to_numpy(value) for key, value in state.items()})
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path


def load_torchvision(arch: str, path_or_url: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None, *, weights: str = V1, drop_head: bool = False,
                     progress: bool = True, timeout: float = 60.0) -> dict[str, dict]:
    """torchvision weights for ``arch`` as cnnjax ``{'params': ..., 'batch_stats': ...}`` (NumPy float32).

    ``path_or_url``: a local ``.pth``/``.npz`` file (used as is), a URL (downloaded into the cache unless a file
    of that name is already there), or None for the file of torchvision's ``weights`` (an enum name of the
    architecture's record, e.g. ``IMAGENET1K_V2``, or ``DEFAULT``; :func:`torchvision_info`).
    A cached ``<name>.npz`` next to the expected ``<name>.pth`` is used when the ``.pth`` is absent. Downloads
    are SHA-256 checked (see the module docstring). ``drop_head`` as in :func:`from_torchvision`.

    Raises :class:`WeightsUnavailableError` when the file is not cached and cannot be downloaded (the message
    names the file and where to place it), :class:`ChecksumError` for a corrupted download, ``ImportError`` to
    read a ``.pth`` without torch, ``FileNotFoundError`` for a missing local path.
    """
    check_arch(arch)
    path = _resolve(arch, path_or_url, get_cache_dir(cache_dir), weights, progress=progress, timeout=timeout)
    return from_torchvision(arch, read_state_dict(path), drop_head=drop_head)


def _resolve(arch: str, path_or_url: str | os.PathLike | None, directory: Path, weights: str = V1, *,
             progress: bool, timeout: float) -> Path:
    if path_or_url is not None and not _is_url(str(path_or_url)):
        path = Path(path_or_url).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        return path
    url = str(path_or_url) if path_or_url is not None else _info(arch, weights)["url"]
    dest = directory / _filename(url)
    if dest.is_file():
        return dest
    if dest.with_suffix(".npz").is_file():
        return dest.with_suffix(".npz")
    return download(url, dest, timeout=timeout, progress=progress)


def init_from_torchvision(arch: str, variables: Mapping[str, Any], path_or_url: str | os.PathLike | None = None,
                          cache_dir: str | os.PathLike | None = None, *, weights: str = V1,
                          progress: bool = True) -> dict[str, dict]:
    """Fine-tuning start point: freshly initialised cnnjax ``variables`` of ``create(arch, num_classes=C)`` with
    every leaf replaced by torchvision's pretrained ``weights`` (:func:`load_torchvision`), except the classifier
    modules (:func:`~cnnjax.weights.torchvision.head_modules`) whose shapes differ from the checkpoint's (C
    other than its 1000 classes): those keep their fresh initialisation. GoogLeNet's auxiliary heads in the
    checkpoint are ignored when the model has none. Leaves keep the dtype of ``variables``; the result is a new
    nested dict (NumPy arrays for the replaced leaves). Raises
    :class:`~cnnjax.weights.torchvision.WeightConversionError` if the trees differ otherwise (e.g. another
    ``in_channels``)."""
    import jax
    from flax.core import unfreeze

    from cnnjax.transfer import load_pretrained
    from cnnjax.weights.torchvision import WeightConversionError, head_modules

    fresh = unfreeze(dict(variables))
    path = _resolve(arch, path_or_url, get_cache_dir(cache_dir), weights, progress=progress, timeout=60.0)
    pretrained = from_torchvision(arch, read_state_dict(path))
    if "aux1" not in fresh.get("params", {}):  # the checkpoint's GoogLeNet auxiliary heads, unused by this model
        pretrained = {c: {k: v for k, v in tree.items() if k not in ("aux1", "aux2")} for c, tree in
                      pretrained.items()}
    try:
        out, _ = load_pretrained(fresh, pretrained, tuple("/".join(h) for h in head_modules(arch)))
    except ValueError as err:
        raise WeightConversionError(f"{arch}: the model's variables do not match the torchvision weights: "
                                    f"{err}") from None
    return jax.tree.map(lambda new, old: np.asarray(new, dtype=old.dtype), out, fresh)
