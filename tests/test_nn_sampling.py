import pytest
import torch

from arvision.nn.sampling import draw_device, filter_top_k_top_p, gumbel_softmax, sample_logits


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
