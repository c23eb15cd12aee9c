import torch

from arvision.models.depth_transformer import DepthTransformer, DepthTransformerConfig
from vilau_common import cases, fixture_pipeline, max_abs


def _model(seed=0):
    torch.manual_seed(seed)
    config = DepthTransformerConfig(depth=4, code_dim=8, llm_dim=12, embed_dim=16, n_layer=2, n_head=2, vocab_size=10)
    return DepthTransformer(config).eval()


def test_causal_over_depth_logits_at_d_ignore_codes_at_and_after_d():
    model = _model()
    hidden, embeds = torch.randn(3, 5, 12), torch.randn(3, 5, 4, 8)
    logits = model(hidden, embeds)
    assert logits.shape == (3, 5, 4, 10)
    for d in range(4):
        changed = embeds.clone()
        changed[..., d:, :] = torch.randn_like(changed[..., d:, :])
        other = model(hidden, changed)
        torch.testing.assert_close(other[..., : d + 1, :], logits[..., : d + 1, :])
        if d < 3:
            assert not torch.allclose(other[..., d + 1 :, :], logits[..., d + 1 :, :])


def test_inputs_are_the_llm_state_then_cumulative_sums_of_code_embeddings():
    model = _model()
    hidden, embeds = torch.randn(2, 12), torch.randn(2, 4, 8)
    seq = model._inputs(hidden, embeds[:, :3])
    expected = torch.cat([model.in_mlp_2(hidden)[:, None], model.in_mlp_1(embeds[:, :3].cumsum(1))], dim=1)
    torch.testing.assert_close(seq, expected + model.pos_emb_d[0])
    # The last code embedding never enters the teacher-forced pass.
    changed = embeds.clone()
    changed[:, 3] += 1.0
    torch.testing.assert_close(model(hidden, changed), model(hidden, embeds))


def test_cached_steps_equal_the_teacher_forced_pass():
    model = _model()
    hidden, embeds = torch.randn(3, 12), torch.randn(3, 4, 8)
    full = model(hidden, embeds)
    cache, code_sum = model.new_cache(), None
    for d in range(4):
        torch.testing.assert_close(model.step(hidden, code_sum, cache), full[:, d], atol=1e-5, rtol=0)
        code_sum = embeds[:, 0] if code_sum is None else code_sum + embeds[:, d]
    assert cache[0][0].shape == (3, 2, 4, 8)  # [rows, heads, depth, head dim]


def test_fixture_teacher_forced_logits():
    c = cases()
    model = fixture_pipeline().model
    with torch.no_grad():
        logits = model.depth_transformer(c["dt.tf.hidden"], model.vision_tower.embed_codes(c["dt.tf.codes"]))
    assert max_abs(logits, c["dt.tf.logits"]) < 1e-4
