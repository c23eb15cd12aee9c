import pytest
import torch

from arvision.errors import InputError
from arvision.tokenizers.residual_vq import ResidualQuantizer, VQCodebook


def _quantizer(shared=False, depth=4, n_embed=256, dim=8, seed=0):
    torch.manual_seed(seed)
    rq = ResidualQuantizer(n_embed, dim, depth, shared=shared).eval()
    # Codebook scales shrink with depth, like a trained residual quantiser's.
    for d, book in enumerate(rq.codebooks):
        book.weight.data[:-1] = torch.randn(n_embed, dim) * 0.6**d
    return rq


def test_residual_norms_shrink_with_depth_and_z_q_is_the_sum_of_code_embeddings():
    rq = _quantizer()
    x = torch.randn(64, 8)
    out = rq(x)
    assert out.codes.shape == (64, 4) and out.codes.dtype == torch.long
    embeds = rq.embed_codes(out.codes)  # [64, 4, 8]
    residual_norms = [(x - embeds[:, : d + 1].sum(1)).norm(dim=-1).mean().item() for d in range(4)]
    assert x.norm(dim=-1).mean().item() > residual_norms[0]
    assert all(a > b for a, b in zip(residual_norms, residual_norms[1:], strict=False))
    torch.testing.assert_close(out.z_q, embeds.sum(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(rq.decode_codes(out.codes), embeds.sum(1), atol=1e-6, rtol=0)


def test_each_depth_picks_the_l2_nearest_row_of_its_own_codebook():
    rq = _quantizer()
    x = torch.randn(16, 8)
    codes = rq(x).codes
    residual = x.clone()
    for d in range(4):
        rows = rq.codebooks[d].weight[:-1]
        expected = torch.cdist(residual, rows).argmin(-1)
        assert torch.equal(codes[:, d], expected)
        residual = residual - rows[expected]


def test_padding_row_is_zero_and_never_matched():
    book = VQCodebook(16, 4)
    assert torch.count_nonzero(book.weight[-1]) == 0
    # An input equal to the padding row (zero) must still map to a real code.
    assert int(book.nearest(torch.zeros(3, 4)).max()) < 16
    assert book.distances(torch.randn(5, 4)).shape == (5, 16)


def test_shared_codebook_has_one_state_entry_and_is_used_at_every_depth():
    rq = _quantizer(shared=True, depth=3)
    keys = {k.split(".")[1] for k in rq.state_dict() if k.startswith("codebooks.")}
    assert keys == {"0"}
    codes = rq(torch.randn(10, 8)).codes
    torch.testing.assert_close(rq.embed_codes(codes)[:, 2], rq.codebooks[0].weight[codes[:, 2]])


def test_straight_through_gradient_and_commitment_loss():
    rq = _quantizer()
    x = torch.randn(20, 8, requires_grad=True)
    out = rq(x)
    out.z_q.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    partial = rq.embed_codes(out.codes).cumsum(1)
    expected = torch.stack([(x - partial[:, d]).pow(2).mean() for d in range(4)]).mean()
    torch.testing.assert_close(out.commitment_loss, expected)


def test_ema_update_moves_used_codes_to_their_cluster_mean_and_restarts_dead_codes():
    torch.manual_seed(1)
    book = VQCodebook(4, 2, decay=0.0, restart_unused=True)
    vectors = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    codes = torch.tensor([0, 0, 1])
    book.ema_update(vectors, codes)
    # decay 0: EMA equals the batch statistics; normalisation leaves cluster means (up to eps).
    torch.testing.assert_close(book.weight[0], torch.tensor([2.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(book.weight[1], torch.tensor([0.0, 5.0]), atol=1e-4, rtol=0)
    # Codes 2 and 3 were unused: restarted near a batch vector, with EMA count 1.
    for row in book.weight[2:4]:
        assert torch.cdist(row[None], vectors).min() < 0.01
    assert torch.equal(book.cluster_size_ema[2:], torch.ones(2))
    assert torch.count_nonzero(book.weight[-1]) == 0


def test_training_mode_updates_codebooks_eval_mode_does_not():
    rq = _quantizer()
    before = rq.codebooks[0].weight.clone()
    rq.eval()(torch.randn(32, 8))
    assert torch.equal(before, rq.codebooks[0].weight)
    rq.train()(torch.randn(32, 8))
    assert not torch.equal(before, rq.codebooks[0].weight)


@pytest.mark.parametrize("shape", [(2, 3, 3, 8), (5, 8)])
def test_any_leading_shape(shape):
    rq = _quantizer()
    out = rq(torch.randn(shape))
    assert out.codes.shape == (*shape[:-1], 4)
    assert out.z_q.shape == shape


@pytest.mark.parametrize(
    ("codes", "match"),
    [
        (torch.full((5, 4), 256), r"codes must be in \[0, 256\), got values in \[256, 256\]"),  # the padding row
        (torch.full((5, 4), 300), r"\[0, 256\), got values in \[300, 300\]"),
        (torch.tensor([[0, 1, -1, 2]]), r"\[0, 256\), got values in \[-1, 2\]"),
        (torch.zeros(5, 5, dtype=torch.long), r"1 <= D <= depth 4, got \(5, 5\)"),
        (torch.zeros(5, 0, dtype=torch.long), r"1 <= D <= depth 4"),
        (torch.tensor(3), r"1 <= D <= depth 4"),
        (torch.zeros(5, 4), "codes must be integers, got torch.float32"),
        (torch.zeros(5, 4, dtype=torch.bool), "codes must be integers, got torch.bool"),
    ],
)
def test_embed_and_decode_codes_reject_unusable_codes(codes, match):
    rq = _quantizer()
    with pytest.raises(InputError, match=match):
        rq.embed_codes(codes)
    with pytest.raises(InputError, match=match):
        rq.decode_codes(codes)


def test_fewer_depths_and_other_integer_dtypes_decode():
    rq = _quantizer()
    codes = rq(torch.randn(6, 8)).codes
    torch.testing.assert_close(rq.decode_codes(codes[:, :2]), rq.embed_codes(codes)[:, :2].sum(1))
    torch.testing.assert_close(rq.decode_codes(codes.int()), rq.decode_codes(codes))
    assert rq.decode_codes(codes[:0]).shape == (0, 8)


def test_empty_batch_in_training_mode_leaves_the_codebooks_alone():
    rq = ResidualQuantizer(64, 32, 3).train()
    before = {k: v.clone() for k, v in rq.state_dict().items()}
    out = rq(torch.zeros(0, 32, requires_grad=True))
    assert out.codes.shape == (0, 3) and out.z_q.shape == (0, 32)
    assert out.commitment_loss.item() == 0.0 and out.commitment_loss.requires_grad
    assert all(torch.equal(before[k], v) for k, v in rq.state_dict().items())


def test_features_of_another_dtype_are_compared_in_the_codebook_dtype():
    rq = _quantizer()
    x = torch.randn(16, 8).bfloat16()
    assert torch.equal(rq(x).codes, rq(x.float()).codes)
    with pytest.raises(InputError, match=r"features must be \[\.\.\., 8\], got \(16, 7\)"):
        rq(torch.randn(16, 7))
