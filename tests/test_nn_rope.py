import math

import torch

from arvision.nn.rope import apply_rope, grid_positions, rope_1d, rope_2d


def test_grid_positions_are_top_left_aligned_on_final_grid():
    pos = grid_positions([1, 3], final=64)
    assert pos.shape == (10, 2)
    assert pos[0].tolist() == [0.0, 0.0]
    rows = pos[1:, 0].reshape(3, 3)[:, 0]
    assert torch.allclose(rows, torch.tensor([0.0, 64 / 3, 128 / 3]))


def test_2d_rope_matches_reference_formula():
    """out[m] = q[m] cos(r f) - q[m+d/2] sin(r f); out[m+d/2] = q[m+d/2] cos(c f) + q[m] sin(c f)."""
    d = 16
    pos = torch.tensor([[[3.0, 7.5], [0.0, 21.0]]])
    cos, sin = rope_2d(pos, d)
    q = torch.randn(1, 1, 2, d, generator=torch.Generator().manual_seed(0))
    out = apply_rope(q, cos, sin)[0, 0]
    freqs = [10000 ** (-4 * j / d) for j in range(d // 4)]
    for n in range(2):
        r, c = pos[0, n].tolist()
        for m in range(d // 2):
            f = freqs[m % (d // 4)]
            a, b = q[0, 0, n, m].item(), q[0, 0, n, m + d // 2].item()
            assert math.isclose(out[n, m].item(), a * math.cos(r * f) - b * math.sin(r * f), abs_tol=1e-5)
            assert math.isclose(out[n, m + d // 2].item(), b * math.cos(c * f) + a * math.sin(c * f), abs_tol=1e-5)


def test_1d_rope_preserves_norm_and_relative_positions():
    d = 8
    q = torch.randn(1, 1, 1, d)
    k = torch.randn(1, 1, 1, d)

    def dot(pq, pk):
        cq, sq = rope_1d(torch.tensor([[pq]]), d)
        ck, sk = rope_1d(torch.tensor([[pk]]), d)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert math.isclose(dot(3, 1), dot(10, 8), rel_tol=1e-4, abs_tol=1e-5)
    cos, sin = rope_1d(torch.tensor([[5]]), d)
    assert torch.allclose(apply_rope(q, cos, sin).norm(), q.norm(), atol=1e-5)


def test_rope_matches_recorded_official_values(hart_cases, tiny_hart):
    c = hart_cases
    offset = tiny_hart.image_offset(c["ctx_position_ids"])
    pos = tiny_hart.image_positions((2, 3, 4, 6, 8), 8, offset, 2, torch.device("cpu"))
    torch.testing.assert_close(pos, c["rope_img_pos"], atol=0, rtol=0)
    cos, sin = rope_2d(pos, 16)
    torch.testing.assert_close(cos, c["rope_img_cos"], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, c["rope_img_sin"], atol=1e-6, rtol=0)
    cos, sin = rope_1d(c["ctx_position_ids"], 16)
    torch.testing.assert_close(cos, c["rope_ctx_cos"], atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, c["rope_ctx_sin"], atol=1e-6, rtol=0)
