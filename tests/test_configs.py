"""Every shipped training config parses into the dataclasses of its task (key names and value types)."""

from pathlib import Path

import pytest

from arvision.training.config import build_dataclass, load_config
from arvision.training.hart_task import HartData, HartModel
from arvision.training.loop import TrainConfig
from arvision.training.tasks import TASK_NAMES, TokenizerData, TokenizerModel
from arvision.training.vila_u_task import TowerData, TowerModel, VilaUData, VilaUModel

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
SECTIONS = {
    "tokenizer": (TokenizerModel, TokenizerData),
    "hart": (HartModel, HartData),
    "vila-u-tower": (TowerModel, TowerData),
    "vila-u": (VilaUModel, VilaUData),
}


def test_every_task_has_its_sections_listed():
    assert set(SECTIONS) == set(TASK_NAMES)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_parses(path):
    config = load_config(TrainConfig, path)
    assert config.task in SECTIONS, f"{path.name}: task {config.task!r}"
    assert config.out_dir.startswith("runs/"), "runs write under runs/ (ignored by git)"
    model_cls, data_cls = SECTIONS[config.task]
    build_dataclass(model_cls, config.model, prefix="model.")
    build_dataclass(data_cls, config.data, prefix="data.")
    assert config.optim.warmup_steps < config.max_steps
