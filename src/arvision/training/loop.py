"""The training loop shared by every model: plain PyTorch on torchrun, DDP or FSDP2.

AdamW with linear warmup + cosine decay, gradient clipping (per network: ``TrainingTask.clip_groups``) and
accumulation, EMA of the weights, bf16 autocast on GPU, a deterministic sharded data order, atomic resumable
checkpoints (model, EMA, optimizer, data position and every RNG: ``resume=True`` continues bit for bit), a
tqdm bar, a JSONL metrics log (plus TensorBoard when installed), periodic sample grids, and a clean stop on
a NaN loss or gradient.

A run's folder holds one run: a fresh run refuses one with checkpoints, and a run refuses a folder another
run is training in (a lock held while it runs, released by the system if it is killed). ``config.json`` is
the config the run was started with; a resume writes its own beside it (``config.resume_<step>.json``) and
drops the metrics logged after the checkpoint it continues from, since it logs those steps again.

What is trained is described by a :class:`~arvision.training.tasks.TrainingTask`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from arvision.checkpoint import atomic_folder, atomic_path, cast_weights, write_json
from arvision.errors import ArvisionError, CheckpointError, InputError
from arvision.imaging import make_grid
from arvision.training import checkpointing
from arvision.training.config import to_dict
from arvision.training.distributed import (
    DistInfo,
    Parallel,
    all_ranks_agree,
    init_distributed,
    leave_after_error,
    mean_over_ranks,
    min_over_ranks,
    resolve_parallel,
    shutdown,
    unwrap,
    wrap_model,
)

if TYPE_CHECKING:
    from arvision.training.tasks import TrainingTask


class TrainingDiverged(ArvisionError):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class OptimConfig:
    """AdamW, its warmup + cosine learning-rate schedule and gradient clipping."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max gradient norm of each clip group (TrainingTask.clip_groups); 0 disables

    def __post_init__(self) -> None:
        _require(0 < self.lr < math.inf, f"optim.lr must be a finite number > 0, got {self.lr}")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optim.betas: two in [0, 1), got {self.betas}",
        )
        _require(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _require(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be within [0, 1], got {self.min_lr_ratio}")
        _require(self.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


@dataclass
class TrainConfig:
    """One training run. ``model`` and ``data`` are task-specific and parsed by the task."""

    task: str = "tokenizer"
    out_dir: str = "runs/tokenizer"
    seed: int = 0
    max_steps: int = 1000
    # > 0: stop (checkpoint + export) at the first step past this many seconds; the learning-rate schedule
    # still spans max_steps, and --resume continues to max_steps.
    max_time_s: float = 0.0
    # > 0: stop (checkpoint + export) once this many steps are done; the schedule still spans max_steps
    # (--resume with it raised or removed continues). A run cut short as max_time_s cuts it, but at a step
    # that does not depend on the machine, so a recipe can replay it.
    stop_at_step: int = 0
    # > 0: fit the run to this many seconds of its training loop. The step rate measured over its first steps
    # sets the schedule's length (at most max_steps), so the cosine ends in time, and the run stops there in
    # any case. The length is kept in the checkpoints: --resume continues the same schedule.
    time_budget_s: float = 0.0
    batch_size: int = 8  # per rank and micro-step
    grad_accum: int = 1
    parallel: Parallel = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    ema_decay: float = 0.0  # 0 disables the EMA
    save_every: int = 500
    keep_last: int = 3  # 0 keeps every checkpoint
    log_every: int = 10
    sample_every: int = 0  # 0 disables sample grids
    num_workers: int = 0
    progress: bool = True
    # dtype of the exported model folder's weights (the embedded defaults ship float16; they load into
    # float32 models); checkpoints stay in full precision
    export_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "log_every"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("keep_last", "sample_every", "num_workers", "stop_at_step", "max_time_s", "time_budget_s"):
            _require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _require(0 <= self.ema_decay < 1, f"ema_decay must be within [0, 1) (0 disables the EMA), got {self.ema_decay}")


# The step rate for time_budget_s is measured over CALIBRATION_STEPS steps after the first CALIBRATION_SKIP of a
# process, which pay for allocator warm-up, kernel autotuning and data-loader start-up.
CALIBRATION_SKIP, CALIBRATION_STEPS = 2, 20


def steps_within(budget_s: float, elapsed_s: float, step: int, steps_per_s: float, max_steps: int) -> int:
    """The length of a schedule that is at ``step`` after ``elapsed_s`` of ``budget_s`` seconds and runs at
    ``steps_per_s``: the steps that fit the time left, at most ``max_steps`` and at least ``step``."""
    return max(step, min(max_steps, step + int((budget_s - elapsed_s) * steps_per_s)))


def learning_rate(step: int, max_steps: int, optim: OptimConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine)


class ShardedBatchSampler(Sampler[list[int]]):
    """Endless per-rank batches in a data order fixed by the seed alone.

    Epoch ``e`` visits ``randperm(n)`` seeded with ``seed + e``; global batch ``g`` covers positions
    ``[g * B * world, (g + 1) * B * world)`` and rank ``r`` takes its ``B``-slice, so the union over ranks
    equals a single process with batch ``B * world``, and ``start_batch`` resumes mid-epoch exactly.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, start_batch: int = 0
    ) -> None:
        if num_items < 1:
            raise ArvisionError("the training dataset is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))
            }
        return self._perms[epoch]

    def batch(self, index: int) -> list[int]:
        start = (index * self.world_size + self.rank) * self.batch_size
        return [
            int(self._perm(pos // self.num_items)[pos % self.num_items])
            for pos in range(start, start + self.batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        index = self.start_batch
        while True:
            yield self.batch(index)
            index += 1


class EMA:
    """Exponential moving average of the trainable parameters, keyed by parameter name (shards under FSDP2).

    The decay warms up as ``min(decay, (1 + step) / (10 + step))``: with a constant 0.999 a run stopped
    after 1200 steps would keep 30% of its random initial weights in the average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        # A tied parameter is listed once above but is in the state dict under each of its names.
        names: dict[int, list[str]] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(n)
        self.aliases = {n: names[id(p)] for n, p in self.params.items()}

    def decay_at(self, step: int) -> float:
        """The decay applied by the update after optimizer step ``step``."""
        return min(self.decay, (1 + step) / (10 + step))

    def by_state_dict_key(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` keyed like :attr:`shadow`, under every state-dict key of each parameter."""
        return {alias: value for n, value in tensors.items() for alias in self.aliases[n]}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (0-based)."""
        weight = 1 - self.decay_at(step)
        torch._foreach_lerp_(list(self.shadow.values()), [p.detach() for p in self.params.values()], weight)


def _warn_if_warmup_never_ends(schedule_steps: int, warmup_steps: int, remedy: str) -> None:
    if schedule_steps <= warmup_steps:
        tqdm.write(
            f"warning: {schedule_steps} steps do not pass optim.warmup_steps={warmup_steps}: the learning rate "
            f"never leaves its warmup (lower warmup_steps or {remedy})"
        )


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl record; a line cut short by a kill counts as past every checkpoint."""
    try:
        return json.loads(line)["step"]
    except json.JSONDecodeError:
        return math.inf


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device) for v in batch)
    return batch


class Trainer:
    """Runs ``config`` on ``task``: ``Trainer(config, task).run(resume=True)`` -> path of the exported weights."""

    def __init__(self, config: TrainConfig, task: TrainingTask) -> None:
        self.config = config
        self.task = task
        self.out_dir = Path(config.out_dir).expanduser()
        self.ckpt_dir = self.out_dir / "checkpoints"

    def _autocast(self, info: DistInfo) -> contextlib.AbstractContextManager:
        c = self.config.precision
        use_bf16 = c == "bf16" or (c == "auto" and info.device.type == "cuda")
        return torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    @staticmethod
    def _sync_context(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        if isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
            return model.no_sync()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def run(self, resume: bool = False) -> Path:
        """Train, from the latest checkpoint with ``resume``; return the folder of the exported weights."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way
            raise InputError(f"cannot use out_dir {self.out_dir}: {exc.strerror or exc}") from exc
        if not resume and checkpointing.latest_checkpoint(self.ckpt_dir) is not None:
            # keep_last would prune the new run's checkpoints by step among the old run's, and resume mix them
            raise InputError(
                f"{self.ckpt_dir} holds the checkpoints of an earlier run: pass --resume (resume=True) to continue "
                "it, or choose another out_dir"
            )
        return self._in_process_group(lambda info: self._run_alone(info, resume))

    def _run_alone(self, info: DistInfo, resume: bool) -> Path:
        """:meth:`_run` while the main rank holds ``out_dir``'s lock: a second run there (a supervisor's restart
        while the first still trains, a recipe run twice) would prune, log and checkpoint over this one."""
        if not info.is_main:
            return self._run(info, resume)
        with (self.out_dir / ".lock").open("a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                lock.seek(0)
                raise InputError(
                    f"{self.out_dir} is in use by another training run (process {lock.read().strip() or '?'}): "
                    "wait for it or stop it, or choose another out_dir"
                ) from exc
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            return self._run(info, resume)

    @staticmethod
    def _in_process_group(work: Callable[[DistInfo], Path]) -> Path:
        """``work(info)`` inside the torchrun process group (if any); it returns before the group is left,
        so that the models it built are already unreferenced when :func:`shutdown` collects them."""
        info = init_distributed()
        try:
            result = work(info)
        except BaseException:
            leave_after_error(info)
            raise
        shutdown(info)
        return result

    def export(self, checkpoint: str | Path | None = None, folder: str | Path | None = None) -> Path:
        """Write the weights of a saved checkpoint (a folder, or the name of one in the run's ``checkpoints/``;
        default: the latest) as a model folder, EMA applied
        as at the end of a run, to ``folder`` (default: ``out_dir/exports/<checkpoint name>``, replaced if
        there; a ``folder`` of the caller's must not exist or be empty, as the export replaces it whole)."""
        if folder is not None and Path(folder).exists() and any(Path(folder).iterdir()):
            raise InputError(f"{folder} exists and is not empty: export to a new folder")
        path = checkpointing.latest_checkpoint(self.ckpt_dir) if checkpoint is None else Path(checkpoint).expanduser()
        if path is None:
            raise CheckpointError(f"no checkpoint to export in {self.ckpt_dir}")
        if not path.exists() and (self.ckpt_dir / path).is_dir():  # a checkpoint's name, e.g. step_00000300
            path = self.ckpt_dir / path
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path} (nor in {self.ckpt_dir})")
        if not (path / checkpointing.STATE_FILE).is_file():
            raise CheckpointError(f"{path} is not a training checkpoint (no {checkpointing.STATE_FILE})")
        target = Path(folder) if folder else self.out_dir / "exports" / path.name
        return self._in_process_group(lambda info: self._export_checkpoint(info, path, target))

    def _export_checkpoint(self, info: DistInfo, path: Path, folder: Path) -> Path:
        model, _, optimizer, ema, step_generator = self._build(info)
        checkpointing.load_training_state(path, model, optimizer, ema.shadow if ema else None, step_generator, info)
        return self._export(model, ema, info, folder)

    def _build(
        self, info: DistInfo
    ) -> tuple[nn.Module, list[nn.Parameter], torch.optim.Optimizer, EMA | None, torch.Generator]:
        """(model, trainable params, optimizer, EMA or None, step generator), fresh, before any checkpoint."""
        c = self.config
        torch.manual_seed(c.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        parallel = resolve_parallel(c.parallel, info)
        model = wrap_model(model, parallel, info, self.task.shard_units(model) if parallel == "fsdp" else ())
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.optim.lr, betas=c.optim.betas, weight_decay=c.optim.weight_decay)
        ema = EMA(unwrap(model), c.ema_decay) if c.ema_decay > 0 else None
        return model, params, optimizer, ema, torch.Generator().manual_seed(c.seed)

    def _clip_groups(self, model: nn.Module, params: list[nn.Parameter]) -> dict[str, list[nn.Parameter]]:
        groups = self.task.clip_groups(model)
        if sorted(id(p) for group in groups.values() for p in group) != sorted(id(p) for p in params):
            raise ValueError(f"task {self.task.name!r}: clip_groups must hold every trainable parameter once")
        return groups

    def _run(self, info: DistInfo, resume: bool) -> Path:
        c = self.config
        model, params, optimizer, ema, step_generator = self._build(info)
        clip_groups = self._clip_groups(model, params)
        # The global RNG is each rank's own (dropout, per-sample draws: TrainingTask.loss); rank 0's is a single
        # process's. Checkpoints keep it per rank.
        torch.manual_seed(c.seed + info.rank)
        latest = checkpointing.latest_checkpoint(self.ckpt_dir) if resume else None
        # The data position, step * grad_accum global batches into the seed's order, means the same data only
        # with the same values: a checkpoint records them and a resume must match them.
        layout = {"seed": c.seed, "batch_size": c.batch_size, "grad_accum": c.grad_accum, "world_size": info.world_size}
        state = {}
        if latest is not None:
            # Checked before loading, on every rank alike: with more ranks than the checkpoint has, the new
            # ranks would fail on their missing RNG files while the others wait in the collective load.
            state = checkpointing.read_trainer_state(latest)
            for name, value in layout.items():
                # (checkpoints written before the layout was recorded lack it)
                if state.get(name, value) != value:
                    raise InputError(
                        f"cannot resume {latest} with {name}={value}: it was written with {name}={state[name]}, "
                        "and the position in the data depends on it"
                    )
            shadow = ema.shadow if ema else None
            checkpointing.load_training_state(latest, model, optimizer, shadow, step_generator, info)
        step, schedule_steps = int(state.get("step", 0)), int(state.get("schedule_steps", c.max_steps))
        # A time budget sizes the schedule once per run: a resumed run keeps the length its checkpoint saved.
        sized = "schedule_steps" in state
        calibration_start, calibration_end = step + CALIBRATION_SKIP, step + CALIBRATION_SKIP + CALIBRATION_STEPS
        if info.is_main:
            self._start_logs(step, resumed=latest is not None)
            if not c.time_budget_s > 0:  # a budget's schedule is checked once it is sized
                _warn_if_warmup_never_ends(schedule_steps, c.optim.warmup_steps, "raise max_steps")

        dataset = self.task.build_dataset()
        sampler = ShardedBatchSampler(
            len(dataset), c.batch_size, c.seed, info.rank, info.world_size, step * c.grad_accum
        )
        # Its own generator: creating the iterator must not consume the global RNG restored above.
        loader = iter(
            DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=c.num_workers,
                collate_fn=self.task.collate,
                generator=torch.Generator().manual_seed(c.seed),
            )
        )
        log_file = (self.out_dir / "metrics.jsonl").open("a") if info.is_main else None
        board = self._tensorboard(step) if info.is_main else None
        bar = tqdm(
            total=schedule_steps, initial=step, desc=c.task, disable=not (info.is_main and c.progress), unit="step"
        )
        tick = started = time.time()
        timed = c.max_time_s > 0 or c.time_budget_s > 0
        time_limit = min(t for t in (c.max_time_s, c.time_budget_s, math.inf) if t > 0)
        logged_step, calibration_mark = step, 0.0
        while step < schedule_steps and not 0 < c.stop_at_step <= step:
            lr = learning_rate(step, schedule_steps, c.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logs: dict[str, float] = {}
            finite = True
            for micro in range(c.grad_accum):
                batch = _move(next(loader), info.device)
                with self._sync_context(model, micro == c.grad_accum - 1), self._autocast(info):
                    loss, micro_logs = self.task.loss(model, batch, step_generator)
                finite &= bool(torch.isfinite(loss.detach()).item())
                (loss / c.grad_accum).backward()
                for k, v in {"loss": loss.item(), **micro_logs}.items():
                    logs[k] = logs.get(k, 0.0) + v / c.grad_accum
            norms = self._clip_gradients(clip_groups)
            self._stop_unless_finite(finite, all(map(math.isfinite, norms.values())), step, info)
            logs.update(norms)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(step)
            step += 1
            bar.update()
            elapsed = time.time() - started if timed else 0.0
            sizing = c.time_budget_s > 0 and not sized
            if sizing and step == calibration_start:
                calibration_mark = elapsed
            if sizing and step == calibration_end:
                rate = CALIBRATION_STEPS / max(elapsed - calibration_mark, 1e-9)
                # Each rank fits the schedule to its own clock; all run the shortest, which ends in time on each.
                fit = steps_within(c.time_budget_s, elapsed, step, rate, c.max_steps)
                schedule_steps = int(min_over_ranks(fit, info))
                sized, bar.total = True, schedule_steps
                if info.is_main:
                    tqdm.write(f"time_budget_s={c.time_budget_s:g}: {rate:.3g} steps/s, {schedule_steps} steps fit")
                    _warn_if_warmup_never_ends(schedule_steps, c.optim.warmup_steps, "raise the budget")
            # Stop on every rank at the same step once any rank's clock has run out.
            out_of_time = timed and step < schedule_steps and not all_ranks_agree(elapsed < time_limit, info)
            if out_of_time and info.is_main:
                tqdm.write(f"the time limit ({time_limit:g} s) was reached after {step} steps; saving and exporting")
            cut_short = 0 < c.stop_at_step <= step < schedule_steps
            if cut_short and info.is_main:
                tqdm.write(f"stop_at_step={c.stop_at_step}: stopping at step {step} of {schedule_steps}; saving")
            stopping = out_of_time or cut_short
            if step % c.log_every == 0 or step == schedule_steps or stopping:
                logs = {k: mean_over_ranks(v, info) for k, v in logs.items()}
                now = time.time()
                throughput = self._throughput(info, step - logged_step, now - tick)
                record = {"step": step, "lr": lr, **logs, "samples_per_s": throughput}
                tick, logged_step = now, step
                bar.set_postfix(loss=f"{logs['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}")
                if log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if board is not None:
                    for k, v in record.items():
                        board.add_scalar(k, v, step)
            if step % c.save_every == 0 or step == schedule_steps or stopping:
                checkpointing.save_training_state(
                    self.ckpt_dir,
                    step,
                    model,
                    optimizer,
                    ema.shadow if ema else None,
                    {"step": step, **({"schedule_steps": schedule_steps} if sized else {}), **layout},
                    step_generator,
                    info,
                    c.keep_last,
                )
            if c.sample_every and step % c.sample_every == 0:
                self._write_samples(model, step, info)
            if stopping:
                break
        bar.close()
        if log_file is not None:
            log_file.close()
        if board is not None:
            board.close()
        return self._export(model, ema, info, self.out_dir / "final")

    def _start_logs(self, step: int, resumed: bool) -> None:
        """Record the config (a resume's beside the first run's) and drop the metrics logged past ``step``:
        the steps after the checkpoint a resume continues from, or a fresh run's predecessor's."""
        name = f"config.resume_{step:08d}.json" if resumed else "config.json"
        write_json(self.out_dir / name, to_dict(self.config))
        metrics = self.out_dir / "metrics.jsonl"
        if metrics.is_file():
            kept = [line for line in metrics.read_text().splitlines() if _logged_step(line) <= step]
            with atomic_path(metrics) as tmp:
                tmp.write_text("".join(f"{line}\n" for line in kept))

    def _clip_gradients(self, clip_groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
        """Clip each group's gradient norm to ``optim.grad_clip`` (if > 0); return the norms before clipping."""
        # An infinite max_norm measures without clipping (a scale of 1); clip_grad_norm_ is in every torch>=2.3.
        max_norm = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else math.inf
        norms = {}
        for k, (name, group) in enumerate(clip_groups.items()):
            norm = torch.nn.utils.clip_grad_norm_(group, max_norm)
            norms["grad_norm" if k == 0 else f"grad_norm_{name}"] = float(norm)
        return norms

    def _stop_unless_finite(self, loss_finite: bool, grads_finite: bool, step: int, info: DistInfo) -> None:
        """Stop every rank if the loss or the gradient norm is not finite on any, before the optimizer step puts
        it in the weights (which the next checkpoint would save as good). One reduction: the worst rank's state."""
        worst = min_over_ranks(2 if loss_finite and grads_finite else int(loss_finite), info)
        if worst < 2:
            what = "loss" if worst == 0 else "gradient norm"
            where = checkpointing.latest_checkpoint(self.ckpt_dir)
            # step counts the steps done: this one would be step + 1 in metrics.jsonl and the checkpoint names
            raise TrainingDiverged(
                f"{what} is not finite at step {step + 1}; stopped. Last good checkpoint: {where or 'none'}"
            )

    def _throughput(self, info: DistInfo, steps: int, seconds: float) -> float:
        samples = steps * self.config.batch_size * self.config.grad_accum * info.world_size
        return samples / max(seconds, 1e-9)

    def _tensorboard(self, step: int) -> Any:  # a SummaryWriter, or None without TensorBoard
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return None
        # Hides the events past ``step`` that a resume logs again, as _start_logs does for metrics.jsonl.
        return SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=step + 1)

    def _write_samples(self, model: nn.Module, step: int, info: DistInfo) -> None:
        images = self.task.sample_images(model)
        if images and info.is_main:
            folder = self.out_dir / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            make_grid(images).save(folder / f"step_{step:08d}.png")

    def _export(self, model: nn.Module, ema: EMA | None, info: DistInfo, folder: Path) -> Path:
        weights = checkpointing.full_state_dict(model)
        if ema is not None:
            # The EMA covers trainable parameters; buffers and frozen weights come from the model.
            weights.update(ema.by_state_dict_key(checkpointing.full_state_dict(model, ema.shadow)))
        if info.is_main:
            with atomic_folder(folder) as tmp:
                self.task.export(weights, tmp)
                if self.config.export_dtype != "float32":
                    cast_weights(tmp, getattr(torch, self.config.export_dtype))
        return folder
