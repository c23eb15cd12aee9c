"""Resumable training state on ``torch.distributed.checkpoint`` (DCP), written atomically.

A checkpoint is a folder ``step_XXXXXXXX/`` holding the DCP shards of the model, optimizer and EMA
weights, one RNG-state file per rank and ``trainer_state.json`` (step, schedule length, and the seed, batch
size, accumulation and world size that the data position depends on). It is
written under a hidden temporary name and renamed into place once every rank has finished, so a run
killed mid-write leaves the previous checkpoint as the latest one. The same code serves a single
process, DDP and FSDP2 (sharded parameters are saved shard by shard).
"""

from __future__ import annotations

import random
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from arvision.checkpoint import read_json, write_json
from arvision.errors import CheckpointError
from arvision.training.distributed import DistInfo, barrier

STEP_PREFIX = "step_"
# Only these names are checkpoints: a copy such as ``step_00000006.bak`` is left alone (not loaded, not pruned).
CHECKPOINT_NAME = re.compile(rf"{STEP_PREFIX}[0-9]+")
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"
T = TypeVar("T")


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(STEP_PREFIX)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def rng_state(step_generator: torch.Generator) -> dict[str, Any]:
    """This process's RNG states (torch, CUDA, Python, NumPy) and the step generator's."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "step_generator": step_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], step_generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    step_generator.set_state(state["step_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dcp_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with warnings.catch_warnings():
        # DCP warns that it runs without a process group, which is exactly the single-process case.
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        return fn(*args, **kwargs)


def save_training_state(
    root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: Mapping[str, torch.Tensor] | None,
    trainer_state: Mapping[str, Any],
    step_generator: torch.Generator,
    info: DistInfo,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint ``step`` (collective: every rank must call it) and prune all but the last ``keep_last``."""
    root = Path(root)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(info)
    try:
        model_state, optim_state = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_state, "optim": optim_state}
        if ema is not None:
            state["ema"] = dict(ema)
        _dcp_call(dcp.save, state, checkpoint_id=str(tmp))
        torch.save(rng_state(step_generator), tmp / f"rng_rank{info.rank}.pt")
        barrier(info)
        if info.is_main:
            write_json(tmp / STATE_FILE, dict(trainer_state))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in checkpoint_dirs(root)[:-keep_last] if keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier(info)
    return final


def load_training_state(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
    step_generator: torch.Generator,
    info: DistInfo,
) -> None:
    """Restore model, optimizer, EMA (in place) and this rank's RNG (``trainer_state.json`` is the caller's to
    read: :func:`read_trainer_state`)."""
    path = Path(path)
    rng_file = path / f"rng_rank{info.rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"{path} has no RNG state for rank {info.rank}: was it written with another world size?")
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    if ema is not None:
        state["ema"] = ema
    try:
        saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc}") from exc
    _check_saved_tensors(state, saved, path)
    try:
        _drop_unsaved_optimizer_state(optim_state, saved)
        _dcp_call(dcp.load, state, checkpoint_id=str(path))
    except CheckpointException as exc:  # a BaseException, whose text holds every rank's traceback
        causes = "; ".join(f"{type(e).__name__}: {e}" for e, _ in exc.failures.values())
        raise CheckpointError(f"cannot restore training state from {path}: {causes}") from exc
    except Exception as exc:
        raise CheckpointError(f"cannot restore training state from {path}: {exc}") from exc
    # Not strict: the optimizer state left out above (dcp.load has already required every model key).
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=StateDictOptions(strict=False),
    )
    # Our own file, written by save_training_state: it holds numpy/python RNG objects, not just tensors.
    set_rng_state(torch.load(rng_file, weights_only=False), step_generator)


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``: its step, schedule length and data layout."""
    return read_json(Path(path) / STATE_FILE)


def _check_saved_tensors(state: Mapping[str, Any], saved: Mapping[str, Any], path: Path) -> None:
    """Refuse, naming the first differences, a checkpoint whose model or EMA tensors are not this run's: a
    changed model override or ``ema_decay`` (DCP would fail on them with every rank's traceback)."""
    problems = []
    has_ema = any(key.startswith("ema.") for key in saved)
    if "ema" in state and not has_ema:
        problems.append("it holds no EMA weights, and this run has ema_decay > 0")
    for part in ("model", "ema") if has_ema else ("model",):
        for name, tensor in state.get(part, {}).items():
            meta = saved.get(f"{part}.{name}")
            if meta is None:
                problems.append(f"{part} tensor {name} is missing")
            elif tuple(getattr(meta, "size", ())) != tuple(tensor.shape):
                problems.append(f"{part} tensor {name} is {list(meta.size)} there and {list(tensor.shape)} here")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{path} was written for another model: {'; '.join(problems[:3])}{more}. Resume and export with the "
            "model settings and ema_decay of the run that wrote it"
        )


def _drop_unsaved_optimizer_state(optim_state: dict[str, Any], saved: Mapping[str, Any]) -> None:
    """Leave out of ``optim_state`` the parameters the checkpoint holds no optimizer state for.

    ``get_state_dict`` gives every parameter a state, but a parameter that never had a gradient (a scale a
    low-resolution run never reaches, a frozen branch) had none when the checkpoint was saved; it gets none
    back, as in the run that saved it.
    """
    prefix = "optim.state."
    with_state = {key[len(prefix) :].rsplit(".", 1)[0] for key in saved if key.startswith(prefix)}  # "<fqn>.exp_avg"
    for name in [name for name in optim_state["state"] if name not in with_state]:
        del optim_state["state"][name]


def full_state_dict(model: nn.Module, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Unsharded CPU copy of the model's weights, or of ``tensors`` (e.g. EMA shards). Collective under FSDP2."""
    if tensors is None:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu().clone() for k, v in tensors.items()}
