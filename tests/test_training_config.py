import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from arvision.errors import InputError
from arvision.training.config import load_config, parse_overrides, yaml_values
from arvision.training.loop import TrainConfig


@dataclass
class Inner:
    lr: float = 1e-3
    sizes: tuple[int, ...] = (1, 2)
    name: str | None = None


@dataclass
class Outer:
    steps: int = 10
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    extra: dict[str, Any] = field(default_factory=dict)


def test_file_then_overrides_with_type_conversion(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 20\ninner:\n  lr: 0.5\n  sizes: [3, 4]\n")
    overrides = ["inner.lr=2e-4", "--flag=true", "mode=b", "inner.sizes=5,6,7", "inner.name=x", "extra.k=v"]
    config = load_config(Outer, path, overrides)
    expected = Outer(steps=20, flag=True, mode="b", inner=Inner(lr=2e-4, sizes=(5, 6, 7), name="x"), extra={"k": "v"})
    assert config == expected


@pytest.mark.parametrize(("suffix", "text"), [(".toml", "steps = 3\n[inner]\nlr = 0.1\n"), (".json", None)])
def test_toml_and_json_files(tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text or json.dumps({"steps": 3, "inner": {"lr": 0.1}}))
    config = load_config(Outer, path)
    assert config.steps == 3 and config.inner.lr == 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stepz=1"], "unknown config key"),
        (["inner.lrr=1"], "inner.lrr"),
        (["steps=1.5"], "as int"),
        (["flag=maybe"], "boolean"),
        (["mode=c"], "one of"),
        (["steps"], "key=value"),
        (["extra={a: 1}"], r"extra: expected a mapping \(set its keys one by one: extra.NAME=VALUE\)"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(InputError, match=message):
        load_config(Outer, None, overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inner:\n  sizes: 3\n", "inner.sizes: expected a list, got 3"),
        ("steps: [1, 2]\n", r"steps: cannot read \[1, 2\] as int"),
        ("steps: .inf\n", "steps: cannot read inf as int"),
        ("inner:\n  name: [a]\n", r"inner.name: cannot read \['a'\] as str \| None"),
        ("inner:\n  lr: null\n", "inner.lr: expected a number, got None"),
    ],
)
def test_a_file_value_of_the_wrong_shape_is_named(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(Outer, path)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json"):
        load_config(Outer, bad)
    image = tmp_path / "scene.yaml"  # a PNG under a config's name
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(InputError, match="scene.yaml is not UTF-8 text"):
        load_config(Outer, image)
    text = tmp_path / "notes.txt"
    text.write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"must be \.yaml, \.toml or \.json"):
        load_config(Outer, text)


def test_whole_numbers_are_read_exactly_and_null_is_not_text():
    config = load_config(TrainConfig, None, ["seed=9007199254740993", "max_steps=2e3"])
    assert (config.seed, config.max_steps) == (9007199254740993, 2000)  # past float's 53 bits
    with pytest.raises(InputError, match="out_dir: expected text, got None"):
        load_config(TrainConfig, None, [], base={"out_dir": None})


def test_train_config_keeps_task_sections_as_dicts():
    config = load_config(TrainConfig, None, ["model.tokenizer.ch=32", "optim.lr=1e-3", "max_steps=1e3"])
    assert config.model == {"tokenizer": {"ch": "32"}} and config.optim.lr == 1e-3 and config.max_steps == 1000
    assert parse_overrides(["--a.b=c=d"]) == {"a.b": "c=d"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=0", "batch_size must be >= 1, got 0"),
        ("grad_accum=0", "grad_accum must be >= 1"),
        ("stop_at_step=-1", "stop_at_step must be >= 0"),
        ("ema_decay=1", r"ema_decay must be within \[0, 1\)"),
        ("optim.lr=0", "optim.lr must be a finite number > 0"),
        ("optim.lr=inf", "optim.lr must be a finite number > 0, got inf"),
        ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
        ("optim.min_lr_ratio=2", r"optim.min_lr_ratio must be within \[0, 1\]"),
        ("optim.betas=0.9,1.5", "optim.betas"),
    ],
)
def test_train_config_values_out_of_range_are_named(override, message):
    with pytest.raises(InputError, match=message):
        load_config(TrainConfig, None, [override])


def test_yaml_values_types_override_text_and_keeps_typed_values():
    assert yaml_values({"top_k": "20", "scale": "3.5", "off": "null", "typed": [1, 2], "word": "llama"}) == {
        "top_k": 20,
        "scale": 3.5,
        "off": None,
        "typed": [1, 2],
        "word": "llama",
    }
