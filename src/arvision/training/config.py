"""Training configs: small (nested) dataclasses read from YAML/TOML/JSON, plus ``key=value`` overrides.

``load_config(TrainConfig, "run.yaml", ["optim.lr=3e-4", "max_steps=100"])`` builds the dataclass from
the file, applies the overrides (dotted keys reach nested dataclasses) and converts each value to the
field's declared type. Unknown keys are errors that name the key, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from arvision.errors import InputError

T = TypeVar("T")


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    if path.suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise InputError(f"config file must be .yaml, .toml or .json: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"config file {path} is not UTF-8 text") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # each parser raises its own error type
        raise InputError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["a.b=1", "--c=x"]`` -> ``{"a.b": "1", "c": "x"}``."""
    parsed = {}
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise InputError(f"override must look like key=value, got {item!r}")
        parsed[key] = value
    return parsed


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (often a string from the command line) to the field type ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except InputError:
                continue
        raise InputError(f"{key}: cannot read {value!r} as {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list) or annotation in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.strip("[]() ").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise InputError(f"{key}: expected a list, got {value!r}")
        item_type = args[0] if args else str
        items = [_coerce(v.strip() if isinstance(v, str) else v, item_type, key) for v in value]
        return tuple(items) if (origin or annotation) is tuple else items
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        return build_dataclass(annotation, value, prefix=f"{key}.")
    if (origin or annotation) is dict:
        if not isinstance(value, Mapping):
            raise InputError(f"{key}: expected a mapping (set its keys one by one: {key}.NAME=VALUE), got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{key}: expected a boolean, got {value!r}")
    if annotation is int:
        number = value
        if isinstance(value, str):
            try:
                number = int(value)  # exactly, beyond float's 53 bits (seeds)
            except ValueError:
                try:
                    number = float(value)  # 1e3
                except ValueError as exc:
                    raise InputError(f"{key}: cannot read {value!r} as int") from exc
        if isinstance(number, bool) or not isinstance(number, int | float) or not float(number).is_integer():
            raise InputError(f"{key}: cannot read {value!r} as int")
        return int(number)
    if annotation in (float, str, Path):
        if isinstance(value, bool) or not isinstance(value, str | int | float | Path):
            # str() would take anything: a YAML null would become the folder "None"
            raise InputError(f"{key}: expected {'a number' if annotation is float else 'text'}, got {value!r}")
        try:
            return annotation(value)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{key}: cannot read {value!r} as {annotation.__name__}") from exc
    return value


def yaml_values(section: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a free-form mapping section (a ``dict[str, Any]`` field) with text read as YAML: from
    ``key=value`` overrides they arrive as strings ("3", "null"), from a file already typed."""
    import yaml

    return {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in section.items()}


def build_dataclass(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a (nested) mapping, converting values to the field types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise InputError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}; known: {sorted(fields)}")
    no_default = dataclasses.MISSING
    required = [f.name for f in dataclasses.fields(cls) if f.default is no_default and f.default_factory is no_default]
    missing = [name for name in required if name not in data]
    if missing:
        raise InputError(f"missing config key(s): {', '.join(prefix + k for k in missing)}")
    values = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**values)
    except InputError as exc:  # the dataclass's own checks name its fields, not where they sit in the config
        if prefix and not str(exc).startswith(prefix):
            raise InputError(f"{prefix.rstrip('.')}: {exc}") from exc
        raise


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"override {key!r} descends into a non-mapping value")
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """``base`` dict, then the file at ``path``, then ``key=value`` overrides -> dataclass ``cls``."""
    data = dict(base or {})
    if path is not None:
        data = _merge(data, read_config_file(path))
    data = _merge(data, _nest(parse_overrides(overrides)))
    return build_dataclass(cls, data)


# An epoch's sample indices are shuffled in memory (8 bytes each): 1e8 is 800 MB, far past any epoch of use.
MAX_DATA_LENGTH = 10**8


def require_positive(section: str, values: Mapping[str, int | float]) -> None:
    """InputError naming ``section.key`` for the first value that is not > 0."""
    for key, value in values.items():
        if value <= 0:
            raise InputError(f"{section}.{key} must be > 0, got {value}")


def require_data_length(length: int) -> None:
    """``data.length``, the samples of an epoch, within 1..MAX_DATA_LENGTH."""
    require_positive("data", {"length": length})
    if length > MAX_DATA_LENGTH:
        raise InputError(f"data.length must be at most {MAX_DATA_LENGTH:,} (one epoch's order), got {length}")


def require_within(section: str, values: Mapping[str, float], low: float, high: float = math.inf) -> None:
    """InputError naming ``section.key`` for the first value that is not a finite number in [low, high]."""
    for key, value in values.items():
        if not (low <= value <= high and math.isfinite(value)):  # NaN fails the comparisons
            bounds = f"within [{low:g}, {high:g}]" if high < math.inf else f"a finite number >= {low:g}"
            raise InputError(f"{section}.{key} must be {bounds}, got {value}")
