from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def hart_fixture_dir() -> Path:
    return FIXTURES / "hart-tiny-a"


@pytest.fixture(scope="session")
def hart_cases(hart_fixture_dir) -> dict[str, torch.Tensor]:
    return load_file(str(hart_fixture_dir / "cases.safetensors"))
