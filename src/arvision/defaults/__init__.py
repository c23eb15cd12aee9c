"""Weights shipped inside the package, so that the CLI works right after install with no network."""

from __future__ import annotations

from pathlib import Path

from arvision.errors import CheckpointError

DEFAULTS_DIR = Path(__file__).parent


def default_model_path(name: str) -> Path:
    """Folder of the embedded default model ``name`` (e.g. ``"tokenizer"``)."""
    path = DEFAULTS_DIR / name
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the embedded default model {name!r} is not installed at {path}; pass --model FOLDER")
    return path
