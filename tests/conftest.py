from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hart_common import HART_TINY, load_tiny_hart, make_tiny_qwen2

# The tests run tiny models, where intra-op threads cost more than they give (5x slower on a busy
# 2-core machine); one thread keeps the suite fast and its timings stable.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def hart_fixture_dir() -> Path:
    return FIXTURES / "hart-tiny-a"


@pytest.fixture(scope="session")
def hart_cases(hart_fixture_dir) -> dict[str, torch.Tensor]:
    return load_file(str(hart_fixture_dir / "cases.safetensors"))


@pytest.fixture(scope="session")
def tiny_hart():
    """The hart-tiny-a transformer with its EMA weights."""
    return load_tiny_hart()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from arvision.tokenizers.hart_tokenizer import HybridTokenizer

    return HybridTokenizer.from_pretrained(HART_TINY / "tokenizer")


@pytest.fixture(scope="session")
def tiny_qwen2_24(tmp_path_factory) -> Path:
    """A tiny Qwen2 text encoder matching hart-tiny-a's context (24 dims)."""
    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2_24"), hidden=24)
