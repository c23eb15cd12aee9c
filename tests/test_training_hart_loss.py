import pytest
import torch

from arvision.models.hart import HartConfig, HartTransformer
from arvision.models.hart_sampler import Condition
from arvision.tokenizers.multiscale_quantizer import MultiScaleQuantizer
from arvision.training.hart_loss import (
    HartLossConfig,
    condition_dropout_mask,
    hart_loss,
    last_scale_keep,
)


def _setup(pooling="max"):
    torch.manual_seed(0)
    cfg = HartConfig(
        embed_dim=32,
        depth=2,
        num_heads=2,
        context_token=6,
        context_dim=8,
        patch_nums=(1, 2, 4, 8),
        vocab_size=40,
        latent_channels=4,
        diff_width=16,
        diff_depth=1,
        sep_aln_pooling_mode=pooling,
    )
    model = HartTransformer(cfg)
    quant = MultiScaleQuantizer(40, 4, num_tracked_scales=4).requires_grad_(False)
    f = torch.randn(3, 4, 8, 8)
    indices, r_pre = quant.latent_to_indices(f, cfg.patch_nums)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    cond = Condition(torch.randn(3, 6, 8), mask, mask.long().cumsum(1) - 1)
    return model, quant, indices, r_pre, cond


def test_one_optimizer_step_lowers_the_loss_on_a_fixed_batch():
    model, quant, indices, r_pre, cond = _setup()
    config = HartLossConfig(min_keep=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)  # the same per-row draws for both
    first = hart_loss(model, quant, indices, r_pre, cond, config, torch.Generator().manual_seed(0))
    opt.zero_grad()
    first.loss.backward()
    opt.step()
    torch.manual_seed(0)
    second = hart_loss(model, quant, indices, r_pre, cond, config, torch.Generator().manual_seed(0))
    assert torch.isfinite(first.loss) and second.loss < first.loss
    assert second.ce < first.ce
    assert torch.equal(first.kept_last, second.kept_last)


def test_ranks_draw_their_own_rows_from_one_batch_level_draw():
    model, quant, indices, r_pre, cond = _setup()
    config = HartLossConfig(cond_drop_rate=0.5, min_keep=8)

    def on_rank(rank: int):
        # As the training loop runs it: the step generator is the same on every rank, the global RNG is seeded
        # with seed + rank.
        torch.manual_seed(rank)
        return hart_loss(model, quant, indices, r_pre, cond, config, torch.Generator().manual_seed(0))

    rank0, rank1, rank0_again = on_rank(0), on_rank(1), on_rank(0)
    assert rank0.kept_last.shape == rank1.kept_last.shape  # one subsampling rate for the whole batch
    assert not torch.equal(rank0.kept_last, rank1.kept_last)
    assert not torch.equal(rank0.dropped, rank1.dropped)
    assert rank0.diffusion != rank1.diffusion  # timesteps and noise
    for field in ("loss", "kept_last", "dropped"):
        assert torch.equal(getattr(rank0, field), getattr(rank0_again, field)), field


def test_coarse_scale_loss_is_the_cross_entropy_of_the_full_pass_first_scales():
    model, quant, indices, r_pre, cond = _setup()
    config = HartLossConfig(cond_drop_rate=0.0, train_scales=3)
    out = hart_loss(model, quant, indices, r_pre, cond, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = quant.indices_to_ar_input(list(indices), model.config.patch_nums)
        logits, _ = model(
            x, context=cond.context, context_mask=cond.context_mask, context_position_ids=cond.position_ids
        )
    rows = 1 + 4 + 16  # scales 1, 2, 4 of (1, 2, 4, 8)
    expected = torch.nn.functional.cross_entropy(logits[:, :rows].flatten(0, 1), torch.cat(indices[:3], 1).flatten())
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=0)
    assert out.diffusion == 0 and out.kept_last.shape == (3, 0)
    out.loss.backward()
    assert all(p.grad is None for p in model.diffloss.parameters())
    assert model.blocks[0].attn.qkv_proj.weight.grad is not None


def test_train_scales_outside_the_schedule_is_refused():
    model, quant, indices, r_pre, cond = _setup()
    for bad in (0, 5):
        with pytest.raises(ValueError, match="train_scales must be between 1 and 4"):
            hart_loss(model, quant, indices, r_pre, cond, HartLossConfig(train_scales=bad))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_loss_is_finite_for_all_padding_prompts(pooling):
    model, quant, indices, r_pre, cond = _setup(pooling)
    empty = Condition(torch.randn(3, 6, 8), torch.zeros(3, 6, dtype=torch.bool), torch.full((3, 6), -1))
    out = hart_loss(
        model, quant, indices, r_pre, empty, HartLossConfig(cond_drop_rate=0.0), torch.Generator().manual_seed(1)
    )
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_condition_dropout_rate_means_what_it_says():
    drop = condition_dropout_mask(20000, 0.1, torch.Generator().manual_seed(0))
    assert abs(drop.float().mean().item() - 0.1) < 0.01


def test_dropped_rows_become_the_sampler_null_condition():
    model, quant, indices, r_pre, cond = _setup()
    config = HartLossConfig(cond_drop_rate=1.0, subsample_last=False)
    seen = {}

    def record(module, args, out):
        seen["ctx"] = args[0]

    original = cond.context.clone()
    hook = model.context_embed.register_forward_hook(record)
    out = hart_loss(model, quant, indices, r_pre, cond, config, torch.Generator().manual_seed(0))
    hook.remove()
    assert out.dropped.all() and torch.equal(seen["ctx"], torch.zeros_like(cond.context))
    assert out.kept_last.shape == (3, 64)
    assert torch.equal(cond.context, original)  # the caller's tensor is not zeroed in place


def test_last_scale_subsampling_bounds():
    config = HartLossConfig()
    for seed in range(20):
        keep = last_scale_keep(2, 4096, config, torch.Generator().manual_seed(seed))
        n = keep.shape[1]
        assert 32 <= n <= 2048
        assert (keep.diff(dim=1) > 0).all()
    assert last_scale_keep(2, 64, config, torch.Generator().manual_seed(0)).shape[1] >= 32


def test_lower_resolution_batches_train_the_same_model():
    model, quant, _, _, cond = _setup()
    indices, r_pre = quant.latent_to_indices(torch.randn(3, 4, 4, 4), (1, 2, 4))
    out = hart_loss(model, quant, indices, r_pre, cond, HartLossConfig(min_keep=4), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.kept_last.shape[1] <= 16


def test_class_conditional_loss_drops_to_the_null_class():
    torch.manual_seed(0)
    cfg = HartConfig(
        embed_dim=32,
        depth=1,
        num_heads=2,
        num_classes=5,
        patch_nums=(1, 2, 4),
        vocab_size=40,
        latent_channels=4,
        diff_width=16,
        diff_depth=1,
    )
    model = HartTransformer(cfg)
    quant = MultiScaleQuantizer(40, 4, num_tracked_scales=3)
    indices, r_pre = quant.latent_to_indices(torch.randn(2, 4, 4, 4), cfg.patch_nums)
    seen = {}

    def record(module, args, out):
        seen["labels"] = args[0]

    model.class_emb.register_forward_hook(record)
    out = hart_loss(
        model,
        quant,
        indices,
        r_pre,
        Condition(labels=torch.tensor([1, 3])),
        HartLossConfig(cond_drop_rate=1.0, min_keep=4),
        torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out.loss) and seen["labels"].tolist() == [5, 5]
