"""Reading and writing weights and configs: the one place every loader goes through.

Supports single-file ``.safetensors`` / ``.bin`` / ``.pt`` weights and sharded safetensors with a
``*.index.json``. Writes are atomic and durable (fsynced temporary file + rename), so a killed process or a
crash never leaves a half-written checkpoint behind. Mismatches between a checkpoint and a model raise
:class:`~arvision.errors.CheckpointError` naming the offending keys and shapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from arvision.errors import CheckpointError, InputError

StateDict = dict[str, torch.Tensor]

WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_MAX_LISTED = 8


# The process umask, read once at import: os.umask can only be read by setting it, and a set-and-restore on
# every write would briefly change the mode of files that other threads create meanwhile.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync(path: Path) -> None:
    # Read-only is enough for fsync on POSIX, and works on files the writer made read-only (e.g. copied ones).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make renames and new entries in ``folder`` durable, where the platform allows it."""
    # Windows cannot open directories; some file systems refuse fsync on them.
    with contextlib.suppress(OSError):
        _fsync(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The data is fsynced before the rename and the rename after it, so a crash leaves the old file or the new
    one, never an empty or partial one.
    """
    path = Path(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync(tmp_path)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _make_parent(path: Path) -> None:
    """Create the folder ``path`` goes in; an OSError (a file in the way, no permission) is an :class:`InputError`
    naming ``path``, so that API callers get one line too."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # exist_ok: what is there is not a folder
        raise InputError(f"cannot write {path}: {exc.filename} is a file, not a folder") from None
    except OSError as exc:
        raise InputError(f"cannot write {path}: cannot create the folder {exc.filename} ({exc.strerror})") from None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write a JSON object atomically, keys in insertion order, two-space indent."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def find_weights_file(folder: str | os.PathLike, names: Iterable[str] = WEIGHT_FILE_NAMES) -> Path:
    """Return the first of ``names`` present in ``folder`` (any ``*.safetensors`` as a last resort)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    names = list(names)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(f"no weights in {folder}: expected one of {', '.join(names)}")


def read_shard_index(path: str | os.PathLike) -> dict[Path, list[str]]:
    """The shard files of a ``*.index.json`` and the keys its ``weight_map`` assigns to each, by file name.

    Shard names must be relative paths inside the index's folder that name existing weight files (not an index).
    """
    path = Path(path)
    weight_map = read_json(path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path} has no 'weight_map'")
    shards: dict[str, list[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{path}: weight_map[{key!r}] is {name!r}, not a shard file name")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{path}: shard {name!r} (of {key!r}) is not a file inside {path.parent}")
        if name.endswith(".index.json"):
            raise CheckpointError(f"{path}: shard {name!r} (of {key!r}) is an index, not a weights file")
        shards.setdefault(name, []).append(key)
    for name in shards:
        if not (path.parent / name).is_file():
            raise CheckpointError(f"{path}: missing shard file {name!r} ({path.parent / name})")
    return {path.parent / name: shards[name] for name in sorted(shards)}


def check_shard_keys(index: str | os.PathLike, shard: Path, present: Iterable[str], listed: Iterable[str]) -> None:
    """Raise :class:`CheckpointError` unless ``shard`` holds exactly the keys ``index`` assigns to it.

    A key the index does not assign to the shard is refused rather than ignored: it is either a key the index
    forgot or a second copy of a key in another shard, and which copy is right cannot be known.
    """
    present, listed = set(present), set(listed)
    problems = []
    if missing := sorted(listed - present):
        problems.append(f"{len(missing)} key(s) listed for it are not in it: " + ", ".join(missing[:_MAX_LISTED]))
    if unlisted := sorted(present - listed):
        problems.append(f"{len(unlisted)} key(s) in it are not listed for it: " + ", ".join(unlisted[:_MAX_LISTED]))
    if problems:
        raise CheckpointError(f"{index} does not match shard {shard.name}: " + " | ".join(problems))


def load_state_dict(path: str | os.PathLike) -> StateDict:
    """Load a state dict from ``.safetensors``, a torch pickle (``.bin``/``.pt``) or a shard index.

    Each key of a shard index is read from the shard its ``weight_map`` names (see :func:`check_shard_keys`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file: {path}")
    if not path.name.endswith(".index.json"):
        return _load_weights_file(path)
    state: StateDict = {}
    for shard, keys in read_shard_index(path).items():
        shard_state = _load_weights_file(shard)
        check_shard_keys(path, shard, shard_state, keys)
        state.update(shard_state)
    return state


def _load_weights_file(path: Path) -> StateDict:
    """One ``.safetensors`` or torch pickle file (never an index, so a shard cannot recurse)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise many different types
        raise CheckpointError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not contain a flat state dict of tensors")
    return dict(state)


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write ``state`` as safetensors atomically. Tied tensors are written as separate copies."""
    seen_storages: set[int] = set()
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu()
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        if ptr in seen_storages or not value.is_contiguous():
            value = value.clone().contiguous()
        seen_storages.add(ptr)
        tensors[key] = value
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})


def cast_weights(folder: str | os.PathLike, dtype: torch.dtype) -> None:
    """Rewrite every ``.safetensors`` file under ``folder`` with its floating-point tensors in ``dtype``
    (integer tensors, e.g. step counters, are kept)."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        state = load_state_dict(path)
        save_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, path)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder``: the block may have written some without :func:`atomic_path`."""
    for root, _, files in os.walk(folder):
        for name in files:
            if not os.path.islink(Path(root, name)):  # a link's target is not this folder's to sync (may not exist)
                _fsync(Path(root, name))
        _fsync_dir(Path(root))


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; it replaces ``folder`` only if the block succeeds, so a
    reader never finds a half-written one.

    An existing ``folder`` is renamed aside, the new one renamed in, and the old one deleted; if the second
    rename fails the old one is put back. (A crash between the two renames leaves the old folder under a
    ``.<name>.*.old`` name, as POSIX has no atomic swap of two directories; the next successful write of
    ``folder`` deletes such leftovers.)
    """
    folder = Path(folder)
    _make_parent(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        # mkdtemp creates 0700 folders; give the result the permissions a plain mkdir() would.
        os.chmod(tmp, 0o777 & ~_UMASK)
        _fsync_tree(tmp)
        old = tmp.with_suffix(".old") if folder.is_dir() else None  # tmp's name is unique, so is this one
        if old is not None:
            os.rename(folder, old)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if old is not None:
                os.rename(old, folder)
            raise
        _fsync_dir(folder.parent)
        # this swap's old folder, and those that crashed swaps left (the new folder supersedes them all)
        leftover = re.compile(rf"\.{re.escape(folder.name)}\.[a-z0-9_]{{8}}\.old")  # mkdtemp's 8 random characters
        for path in folder.parent.iterdir():
            if path.is_dir() and leftover.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def replacing_folder(folder: str | os.PathLike, entries: Collection[str]) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``folder`` whole if the block succeeds
    (:func:`atomic_folder`: a crash leaves the previous folder, or none, never a half-written one).

    It starts with every entry of an existing ``folder`` but ``entries`` (the ones the block writes, so no stale
    file of theirs survives): a ``text_encoder/`` folder, a README... are kept, hard-linked where the file system
    allows it.
    """
    folder = Path(folder)
    if Path.cwd().resolve().is_relative_to(folder.resolve()):
        # The swap renames the folder aside: the process would be left in a deleted directory.
        raise InputError(f"cannot save into {folder}: it holds the current directory; name a subfolder")
    with atomic_folder(folder) as tmp:
        if folder.is_dir():
            shutil.copytree(
                folder,
                tmp,
                symlinks=True,
                ignore=lambda where, names: entries if Path(where) == folder else (),
                copy_function=_link_or_copy,
                dirs_exist_ok=True,
            )
        yield tmp


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link (a kept text encoder may be gigabytes; the link outlives the old folder), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def select_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Keep the keys that start with ``prefix`` and strip it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def check_state_dict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    optional: Callable[[str], bool] = lambda key: False,
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the model's keys and shapes.

    ``optional(key)`` marks model keys that may be missing from the checkpoint (and checkpoint keys
    that the model may ignore), e.g. non-essential buffers.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected and not optional(k)]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape) and not optional(k)
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong[:_MAX_LISTED]))
    if missing:
        problems.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:_MAX_LISTED]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:_MAX_LISTED]))
    if problems:
        raise CheckpointError(f"{source} does not match the model config: " + " | ".join(problems))


def load_checked(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    optional: Callable[[str], bool] = lambda key: False,
) -> None:
    """Validate ``state`` against ``model`` (see :func:`check_state_dict`) and load it."""
    check_state_dict(model, state, source=source, optional=optional)
    expected = model.state_dict()
    usable = {k: v for k, v in state.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    model.load_state_dict(usable, strict=False)
