import re

import numpy as np
import pytest
import torch

from arvision.errors import InputError
from arvision.nn.sampling import draw_device, filter_top_k_top_p, gumbel_softmax, sample_logits, seeded_generator


def test_draws_happen_on_the_generators_device():
    assert draw_device(None, "cpu") == torch.device("cpu")
    assert draw_device(torch.Generator(), "meta") == torch.device("cpu")


def test_seeded_draws_with_a_generator_on_the_tensors_device_are_unchanged():
    """The same stream as drawing directly with torch: moving draws to the generator's device changes nothing
    when it is already there."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 40)
    got = sample_logits(logits, temperature=0.7, top_k=10, top_p=0.9, generator=torch.Generator().manual_seed(4))
    probs = filter_top_k_top_p(logits / 0.7, 10, 0.9).softmax(-1).reshape(-1, 40)
    expected = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(4)).reshape(3, 5)
    assert torch.equal(got, expected)
    mixed = gumbel_softmax(logits, 0.3, torch.Generator().manual_seed(4))
    gumbels = -torch.empty(3, 5, 40).exponential_(generator=torch.Generator().manual_seed(4)).log()
    torch.testing.assert_close(mixed, ((logits + gumbels) / 0.3).softmax(-1), atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_generator_drives_cuda_sampling():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    cpu = sample_logits(logits, top_k=20, generator=torch.Generator().manual_seed(1))
    cuda = sample_logits(logits.cuda(), top_k=20, generator=torch.Generator().manual_seed(1))
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)
    mixed = gumbel_softmax(logits.cuda(), 0.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(mixed.cpu(), gumbel_softmax(logits, 0.5, torch.Generator().manual_seed(1)))


def test_a_list_of_generators_needs_one_per_row():
    logits = torch.randn(4, 3, 50)
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    rows = sample_logits(logits, generator=gens)
    for i in range(4):
        assert torch.equal(rows[i], sample_logits(logits[i : i + 1], generator=torch.Generator().manual_seed(i))[0])
    with pytest.raises(InputError, match="2 generators for 4 samples"):
        sample_logits(logits, generator=gens[:2])
    with pytest.raises(InputError, match="2 generators for 1 samples"):
        gumbel_softmax(torch.randn(6), 1.0, gens[:2])
    with pytest.raises(InputError, match="a torch.Generator or a list of them"):
        sample_logits(logits, generator=iter(gens))
    one = gumbel_softmax(torch.randn(6), 1.0, [torch.Generator().manual_seed(0)])
    assert one.shape == (6,) and torch.allclose(one.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("seed", ["abc", 1.5, True, [1, 2], None, 2**63, -1, -(2**70)])
def test_a_seed_torch_cannot_take_is_named(seed):
    with pytest.raises(InputError, match=re.escape(f"seed must be a whole number in [0, 2**63), got {seed!r}")):
        seeded_generator(seed, "cpu")


def test_a_seed_in_range_seeds_a_generator_on_the_device():
    for seed in (0, 2**63 - 1, np.int64(7)):
        generator = seeded_generator(seed, "cpu")
        assert generator.initial_seed() == seed and generator.device.type == "cpu"
