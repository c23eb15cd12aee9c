"""Training recipes: the stages that make a model, in one file, run by one command (``arvision recipe FILE``).

A model is often the end of a chain: a tokenizer, its decoder fine-tune, a generator on its tokens, a
fine-tune of that. A recipe names the chain::

    out_dir: runs/default_hart
    stages:
      - name: tokenizer
        task: tokenizer
        config: configs/hart_demo_tokenizer.yaml
      - name: generator
        task: hart
        config: configs/hart_demo.yaml
        set: {model.tokenizer: "{tokenizer}", stop_at_step: 1191}

Each stage is one ``arvision train TASK --config CONFIG key=value ...`` run writing to
``<out_dir>/<name>``; ``set`` holds its ``key=value`` overrides, and ``{name}`` in a value is the model
folder an earlier stage exported (``<out_dir>/<name>/final``). Paths are read from the directory the
command runs in, as ``arvision train`` reads them. A stage whose model folder exists is done (exports are
atomic; delete its folder to run it again after changing it); one with checkpoints resumes; so the same
command continues a recipe that was stopped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arvision.errors import InputError
from arvision.training.config import build_dataclass, load_config, read_config_file
from arvision.training.loop import TrainConfig
from arvision.training.tasks import TASK_NAMES

STAGE_REFERENCE = re.compile(r"\{([A-Za-z0-9_-]+)\}")


@dataclass
class RecipeStage:
    """One ``arvision train`` run of a recipe: its task, config file and ``key=value`` overrides."""

    name: str
    task: str
    config: str | None = None  # a training config file; None: the TrainConfig defaults
    set: dict[str, Any] = field(default_factory=dict)  # key=value overrides, dotted keys


@dataclass
class Recipe:
    """The stages of a recipe, run in order, each writing to ``<out_dir>/<name>``."""

    out_dir: str
    stages: list[RecipeStage] = field(default_factory=list)

    def stage_dir(self, name: str) -> Path:
        return Path(self.out_dir) / name

    def model_folder(self, name: str) -> Path:
        """The model folder stage ``name`` exports when it ends."""
        return self.stage_dir(name) / "final"


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe file: stage names unique, tasks known, config files present, every ``{name}``
    naming an earlier stage, and each stage's config and overrides a valid TrainConfig (the task's own model
    and data sections are checked when the stage starts: they may name folders earlier stages make)."""
    if not Path(path).is_file():
        raise InputError(f"recipe file not found: {path}")
    data = read_config_file(path)
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise InputError(f"recipe {path}: needs a non-empty list of stages")
    for k, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise InputError(f"recipe {path}: stage {k + 1} must be a mapping (name, task, config, set)")
    recipe = build_dataclass(Recipe, data)
    earlier: set[str] = set()
    for stage in recipe.stages:
        where = f"recipe {path}, stage {stage.name!r}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stage.name):
            raise InputError(f"{where}: a name holds letters, digits, '-' and '_' only")
        if stage.name in earlier:
            raise InputError(f"{where}: the name is used twice")
        if stage.task not in TASK_NAMES:
            raise InputError(f"{where}: unknown task {stage.task!r}; available: {list(TASK_NAMES)}")
        if stage.config is not None and not Path(stage.config).is_file():
            raise InputError(f"{where}: config file not found: {stage.config}")
        if "out_dir" in stage.set:
            raise InputError(f"{where}: out_dir is the recipe's ({recipe.out_dir}/{stage.name})")
        for key, value in stage.set.items():
            if isinstance(value, dict):
                raise InputError(f"{where}: set {key} by its dotted keys ({key}.NAME: VALUE), not as a mapping")
            for name in STAGE_REFERENCE.findall(str(value)):
                if name not in earlier:
                    raise InputError(f"{where}: {{{name}}} does not name an earlier stage")
        earlier.add(stage.name)
        try:
            load_config(TrainConfig, stage.config, _overrides(recipe, stage), base={"task": stage.task})
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
    return recipe


def _text(value: Any) -> str:
    """A YAML value as ``arvision train`` reads a key=value override."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def stage_arguments(recipe: Recipe, stage: RecipeStage) -> list[str]:
    """The ``arvision train`` arguments of ``stage``: task, config and overrides, stage references resolved."""
    args = [stage.task]
    if stage.config is not None:
        args += ["--config", stage.config]
    return args + _overrides(recipe, stage)


def _overrides(recipe: Recipe, stage: RecipeStage) -> list[str]:
    """``stage``'s ``key=value`` overrides, stage references resolved, its ``out_dir`` last."""
    resolved = {
        key: STAGE_REFERENCE.sub(lambda m: str(recipe.model_folder(m.group(1))), _text(value))
        for key, value in stage.set.items()
    }
    return [f"{key}={value}" for key, value in resolved.items()] + [f"out_dir={recipe.stage_dir(stage.name)}"]
