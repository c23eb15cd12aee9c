import torch

from arvision.nn.kv_cache import KVCache
from arvision.nn.rmsnorm import RMSNorm
from arvision.nn.sampling import gumbel_softmax
from arvision.nn.swiglu import swiglu_hidden
from arvision.nn.timestep import timestep_sinusoid


def test_rmsnorm_fp32_statistics_and_weight():
    norm = RMSNorm(4, eps=1e-6)
    norm.weight.data = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    torch.testing.assert_close(norm(x), torch.tensor([[1.0, -2.0, 3.0, -4.0]]), atol=1e-5, rtol=0)
    half = norm(x.half())
    assert half.dtype == torch.float16 and norm.weight.dtype == torch.float32


def test_timestep_sinusoid_is_cos_then_sin():
    emb = timestep_sinusoid(torch.tensor([0.0, 2.0]), dim=8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.isclose(emb[1, 0], torch.cos(torch.tensor(2.0)))
    assert torch.isclose(emb[1, 4], torch.sin(torch.tensor(2.0)))


def test_swiglu_hidden_size_of_released_model():
    assert swiglu_hidden(1536, 4.0) == 4096
    assert swiglu_hidden(64, 4.0) == 256


def test_kv_cache_appends_per_layer():
    cache = KVCache(2)
    k, v = cache.update(0, torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
    k, v = cache.update(0, torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    assert k.shape == (1, 2, 5, 4) and cache.keys[0].shape[2] == cache.values[0].shape[2] == 5
    assert torch.equal(k[:, :, :3], torch.ones(1, 2, 3, 4)) and torch.equal(v[:, :, 3:], torch.zeros(1, 2, 2, 4))
    assert cache.keys[1] is None


def test_gumbel_softmax_respects_masked_logits_and_generator():
    logits = torch.tensor([[0.0, float("-inf"), 1.0]])
    a = gumbel_softmax(logits, 0.5, torch.Generator().manual_seed(1))
    b = gumbel_softmax(logits, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a[0, 1] == 0 and torch.isclose(a.sum(), torch.tensor(1.0))
