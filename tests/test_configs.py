"""The shipped training configs parse into their task's dataclasses (key names and value types), and the
released-shape one builds the released model size."""

from pathlib import Path

import pytest
import torch

from arvision.models.hart import PRESETS, HartConfig, HartTransformer
from arvision.tokenizers.schedules import PATCH_NUMS
from arvision.training.config import build_dataclass, load_config
from arvision.training.hart_task import HartData, HartModel
from arvision.training.loop import TrainConfig
from arvision.training.recipe import load_recipe, stage_arguments
from arvision.training.tasks import TASK_NAMES, TokenizerData, TokenizerModel
from arvision.training.vila_u_task import TowerData, TowerModel, VilaUData, VilaUModel

CONFIGS = Path(__file__).parents[1] / "configs"
SECTIONS = {
    "tokenizer": (TokenizerModel, TokenizerData),
    "hart": (HartModel, HartData),
    "vila-u-tower": (TowerModel, TowerData),
    "vila-u": (VilaUModel, VilaUData),
}


def test_every_task_has_its_sections_listed():
    assert set(SECTIONS) == set(TASK_NAMES)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("recipes/*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse_stage_by_stage(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # recipes name their configs from the repository root
    recipe = load_recipe(path)
    for stage in recipe.stages:
        task, *args = stage_arguments(recipe, stage)
        config_file = args[1] if args[:1] == ["--config"] else None
        overrides = args[2:] if config_file else args
        config = load_config(TrainConfig, config_file, overrides)
        assert config.task == task and config.out_dir == f"{recipe.out_dir}/{stage.name}"
        model_cls, data_cls = SECTIONS[task]
        build_dataclass(model_cls, config.model, prefix="model.")
        build_dataclass(data_cls, config.data, prefix="data.")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    config = load_config(TrainConfig, path)
    assert config.task in TASK_NAMES and config.max_steps > config.optim.warmup_steps
    assert config.out_dir.startswith("runs/"), "runs write under runs/ (ignored by git)"
    model_cls, data_cls = SECTIONS[config.task]
    build_dataclass(model_cls, config.model, prefix="model.")
    build_dataclass(data_cls, config.data, prefix="data.")


def test_released_shape_config_builds_the_732m_model():
    config = load_config(TrainConfig, CONFIGS / "hart_0.7b_1024px.yaml")
    model = build_dataclass(HartModel, config.model)
    data = build_dataclass(HartData, config.data)
    # What HartTask derives from the released tokenizer (4096 x 32, 16x) and Qwen2-1.5B (hidden 1536).
    derived = dict(
        context_dim=1536,
        context_token=model.context_tokens,
        vocab_size=4096,
        latent_channels=32,
        patch_nums=PATCH_NUMS[data.resolution],
    )
    with torch.device("meta"):
        transformer = HartTransformer(build_dataclass(HartConfig, {**model.transformer, **derived}))
    assert sum(p.numel() for p in transformer.parameters()) == pytest.approx(732.5e6, rel=0.005)


def test_imagenet_config_builds_the_paper_d20_model():
    config = load_config(TrainConfig, CONFIGS / "hart_d20_imagenet256.yaml")
    model = build_dataclass(HartModel, config.model)
    data = build_dataclass(HartData, config.data)
    assert data.source == "classes"
    # What HartTask derives from the released tokenizer (4096 x 32, 16x) and 1000 class folders.
    derived = dict(num_classes=1000, vocab_size=4096, latent_channels=32, patch_nums=PATCH_NUMS[data.resolution])
    with torch.device("meta"):
        transformer = HartTransformer(build_dataclass(HartConfig, {**model.transformer, **derived}))
        preset = HartTransformer(PRESETS["hart-d20"]())
    count = sum(p.numel() for p in transformer.parameters())
    assert count == sum(p.numel() for p in preset.parameters())
    assert count == pytest.approx(649e6, rel=0.001)  # the paper's HART-d20: 649M
