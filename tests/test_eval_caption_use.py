import pytest
import torch

from arvision.errors import InputError
from arvision.eval.caption_use import caption_use, per_scale_cross_entropy
from arvision.models.hart_sampler import Condition
from arvision.training.hart_loss import HartLossConfig, hart_loss
from test_training_hart_loss import _setup


def test_per_scale_cross_entropy_averages_to_the_training_loss():
    model, quant, indices, r_pre, cond = _setup()
    model.eval()
    per_scale = per_scale_cross_entropy(model, quant, indices, cond)
    sizes = [idx.shape[1] for idx in indices]
    config = HartLossConfig(cond_drop_rate=0.0, subsample_last=False)
    with torch.no_grad():
        loss = hart_loss(model, quant, indices, r_pre, cond, config, torch.Generator().manual_seed(0))
    assert len(per_scale) == 4
    assert sum(ce * n for ce, n in zip(per_scale, sizes)) / sum(sizes) == pytest.approx(loss.ce.item(), rel=1e-5)


def test_shuffling_identical_captions_changes_nothing_and_dropping_them_does():
    model, quant, indices, _, cond = _setup()
    model.eval()
    same = Condition(
        cond.context[:1].expand(3, -1, -1), cond.context_mask[:1].expand(3, -1), cond.position_ids[:1].expand(3, -1)
    )
    use = caption_use(model, quant, indices, same)
    assert use.patch_nums == (1, 2, 4, 8)
    assert use.right == pytest.approx(use.shuffled, rel=1e-6)
    assert use.unconditional != pytest.approx(use.right, rel=1e-3)
    different = caption_use(model, quant, indices, cond)
    assert different.shuffled != pytest.approx(different.right, rel=1e-3)
    with pytest.raises(InputError, match="two images"):
        caption_use(model, quant, [idx[:1] for idx in indices], same)
