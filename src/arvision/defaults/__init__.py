"""Weights shipped inside the package, so that the CLI works right after install with no network."""

from __future__ import annotations

from pathlib import Path

from arvision.errors import CheckpointError

DEFAULTS_DIR = Path(__file__).parent


def default_model_path(name: str) -> Path:
    """Folder of the embedded default model ``name``: ``"tokenizer"``, ``"hart"`` or ``"vila-u"``."""
    path = DEFAULTS_DIR / name
    if not any((path / marker).is_file() for marker in ("config.json", "model_index.json")):
        raise CheckpointError(f"the embedded default model {name!r} is not installed at {path}; pass --model FOLDER")
    return path
