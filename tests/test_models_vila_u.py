import copy

import pytest
import torch

from arvision.errors import InputError
from arvision.models.vila_u import SpecialTokens, VilaU, positions_from_mask
from arvision.nn.sampling import filter_top_k_top_p
from arvision.text.vicuna import IMAGE_TOKEN_INDEX
from vilau_common import cases, fixture_pipeline, max_abs, tiny_vila_u, tiny_vila_u_config


def test_special_token_ids_are_the_last_four_of_the_vocabulary():
    assert SpecialTokens.for_vocab(32004) == SpecialTokens(32000, 32001, 32002, 32003)
    assert SpecialTokens.for_vocab(tiny_vila_u_config().vocab_size) == SpecialTokens(1000, 1001, 1002, 1003)


def test_projector_keys_and_exact_gelu():
    model = tiny_vila_u()
    assert sorted(model.mm_projector.state_dict()) == [
        "layers.0.bias",
        "layers.0.weight",
        "layers.2.bias",
        "layers.2.weight",
    ]
    assert model.mm_projector.layers[1].approximate == "none"


def test_an_input_transform_is_folded_into_the_projectors_first_layer():
    projector = tiny_vila_u().mm_projector
    reference = copy.deepcopy(projector)
    channels = projector.layers[0].in_features
    generator = torch.Generator().manual_seed(0)
    mean, transform = torch.randn(channels, generator=generator), torch.randn(channels, channels, generator=generator)
    x = torch.randn(3, 5, channels, generator=generator)
    projector.fold_input_transform(mean, transform)
    torch.testing.assert_close(projector(x), reference((x - mean) @ transform.T), rtol=1e-4, atol=1e-4)
    assert sorted(projector.state_dict()) == sorted(reference.state_dict())
    with pytest.raises(ValueError, match="shapes"):
        projector.fold_input_transform(mean[:-1], transform)


def test_rope_scaling_is_kept_from_the_llm_config():
    config = tiny_vila_u().llm.config
    # transformers 5 moved rope_scaling into rope_parameters.
    assert (getattr(config, "rope_parameters", None) or config.rope_scaling)["rope_type"] == "linear"


def test_splice_puts_each_image_at_its_placeholder_in_order():
    model = tiny_vila_u()
    features = torch.randn(2, 16, 32)
    ids = [1, 5, IMAGE_TOKEN_INDEX, 6, IMAGE_TOKEN_INDEX, 7]
    embeds = model.splice(ids, features)
    table = model.llm.get_input_embeddings().weight
    assert embeds.shape == (4 + 32, 32)
    torch.testing.assert_close(embeds[:2], table[[1, 5]])
    torch.testing.assert_close(embeds[2:18], features[0])
    torch.testing.assert_close(embeds[18], table[6])
    torch.testing.assert_close(embeds[19:35], features[1])
    torch.testing.assert_close(embeds[35], table[7])


def test_positions_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[1, 1, 0, 1], [0, 1, 2, 3]]


def test_cfg_combines_cond_and_uncond_depth_logits_and_shares_codes():
    model = tiny_vila_u()
    torch.manual_seed(3)
    hidden = torch.randn(4, 32)  # [cond x 2; uncond x 2]
    forced = torch.randint(0, 64, (2, 3))
    codes, guided = model.sample_codes(hidden, cfg=2.5, forced=forced)
    assert torch.equal(codes, forced)
    raw = model.depth_transformer(hidden, model.vision_tower.embed_codes(forced.repeat(2, 1)))  # [4, D, V]
    for d in range(3):
        torch.testing.assert_close(guided[d], raw[2:, d] + 2.5 * (raw[:2, d] - raw[2:, d]), atol=1e-5, rtol=0)
    _, plain = model.sample_codes(hidden, cfg=1.0, forced=forced)
    torch.testing.assert_close(plain, raw[:2].transpose(0, 1), atol=1e-5, rtol=0)


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = tiny_vila_u()
    hidden = torch.randn(2, 32)
    a, _ = model.sample_codes(hidden, generator=torch.Generator().manual_seed(0))
    b, _ = model.sample_codes(hidden, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    greedy, logits = model.sample_codes(hidden, top_k=1)
    assert torch.equal(greedy[:, 0], logits[0].argmax(-1))


def test_kv_cached_generation_equals_uncached_recomputation():
    model = tiny_vila_u()
    ids = torch.tensor([[0, 0, 1, 7, 8, 1000], [1, 9, 10, 11, 12, 1000]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)  # left padding in row 0
    out = model.generate_codes(ids, mask, 16, generator=torch.Generator().manual_seed(0), trace=True)
    assert out.codes.shape == (1, 16, 3)
    assert out.hidden.shape == (16, 2, 32) and out.logits.shape == (16, 3, 1, 64)
    with torch.no_grad():
        uncached = model.visual_hidden(ids, mask, out.codes.repeat(2, 1, 1))
    torch.testing.assert_close(uncached.transpose(0, 1), out.hidden, atol=1e-5, rtol=1e-5)
    replay = model.generate_codes(ids, mask, 16, forced_codes=out.codes, trace=True)
    torch.testing.assert_close(replay.logits, out.logits)


def test_inference_runs_the_tower_and_depth_transformer_in_eval_mode_whatever_the_callers_mode():
    config = tiny_vila_u_config()
    config.depth.resid_dropout = 0.5  # dropout in training mode would change every logit
    torch.manual_seed(0)
    model = VilaU(config).train()
    ids = torch.tensor([[1, 7, 8, 1000], [1, 9, 10, 1000]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    before = copy.deepcopy(model.vision_tower.quantizer.state_dict())
    trained = model.generate_codes(ids, mask, 4, generator=torch.Generator().manual_seed(0), trace=True)
    with torch.no_grad():
        train_codes, train_features = model.encode_images(pixels)
        train_pixels = model.decode_codes(trained.codes)
    after = model.vision_tower.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no EMA update of the codebooks
    assert all(m.training for m in model.modules())  # the caller's mode is given back
    model.eval()
    evaluated = model.generate_codes(ids, mask, 4, generator=torch.Generator().manual_seed(0), trace=True)
    with torch.no_grad():
        eval_codes, eval_features = model.encode_images(pixels)
    assert torch.equal(trained.codes, evaluated.codes) and torch.equal(trained.logits, evaluated.logits)
    assert torch.equal(train_codes, eval_codes) and torch.equal(train_features, eval_features)
    with torch.no_grad():
        assert torch.equal(train_pixels, model.decode_codes(trained.codes))


def test_an_empty_model_loads_to_the_same_model_without_random_initialisation(monkeypatch):
    torch.manual_seed(0)
    reference = VilaU(tiny_vila_u_config()).eval()
    calls = []
    original = torch.nn.init.kaiming_uniform_
    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", lambda *a, **k: calls.append(1) or original(*a, **k))
    empty = VilaU.empty(tiny_vila_u_config())
    assert not calls  # nn.Linear / nn.Conv2d initialisation skipped
    empty.load_state_dict(reference.state_dict())
    # Buffers that are not in the state dict (RoPE frequencies, position ids) are computed as usual.
    buffers = dict(reference.named_buffers())
    assert all(torch.equal(value, buffers[name]) for name, value in empty.eval().named_buffers())
    ids = torch.tensor([[1, 7, 8, 1000]])
    with torch.no_grad():
        assert torch.equal(empty.llm(ids).logits, reference.llm(ids).logits)
    torch.manual_seed(0)
    first = torch.nn.Linear(4, 4).weight
    torch.manual_seed(0)
    assert torch.equal(first, torch.nn.Linear(4, 4).weight) and first.abs().min() > 0  # initialisation is back on


def test_generated_codes_decode_to_images():
    model = tiny_vila_u()
    codes = torch.randint(0, 64, (2, 16, 3))
    with torch.no_grad():
        assert model.decode_codes(codes).shape == (2, 3, 16, 16)


# ----- parity with the official code (fixtures/vilau-tiny-a) -----


def test_fixture_projector_output_and_tokens():
    c = cases()
    model = fixture_pipeline().model
    with torch.no_grad():
        codes, features = model.encode_images(c["vt.pixel_values"])
    assert max_abs(features, c["proj.output"]) < 1e-4
    assert torch.equal(codes + model.config.vocab_size, c["proj.tokens"])


def test_fixture_understanding_embeddings_prefill_and_greedy_decoding():
    c = cases()
    model = fixture_pipeline().model
    with torch.no_grad():
        _, features = model.encode_images(c["und.pixel_values"])
        embeds = model.splice(c["und.input_ids"][0], features)
        mask = torch.ones(1, embeds.shape[0], dtype=torch.long)
        hidden = model.llm_hidden(embeds[None], mask, positions_from_mask(mask))
        (ids,), (scores,) = model.generate_text_batch(embeds[None], max_new_tokens=6, temperature=0.0)
    assert max_abs(embeds, c["und.inputs_embeds"][0]) < 1e-4
    assert max_abs(hidden, c["und.prefill_hidden"]) < 1e-4
    assert max_abs(model.llm.lm_head(hidden[:, -1]), c["und.prefill_last_logits"]) < 1e-4
    # transformers 4.36 prefixes a placeholder BOS that was never fed to the model.
    assert ids.tolist() == c["und.greedy_ids"][0, 1:].tolist()
    assert max_abs(scores, c["und.greedy_scores"][:, 0]) < 1e-4


def test_batched_decoding_of_left_padded_prompts_matches_one_prompt_at_a_time():
    c = cases()
    model = fixture_pipeline().model
    with torch.no_grad():
        _, features = model.encode_images(c["und.pixel_values"])
        long = model.splice(c["und.input_ids"][0], features)
        short = long[5:] + 0.1  # another, shorter prompt
    embeds = torch.zeros(2, len(long), long.shape[-1])
    embeds[0], embeds[1, 5:] = long, short
    mask = torch.ones(2, len(long), dtype=torch.long)
    mask[1, :5] = 0
    ids, logits = model.generate_text_batch(embeds, mask, max_new_tokens=5, eos_token_id=None)
    for row, prompt in enumerate((long, short)):
        (alone_ids,), (alone_logits,) = model.generate_text_batch(prompt[None], max_new_tokens=5, eos_token_id=None)
        assert torch.equal(ids[row], alone_ids)
        assert max_abs(logits[row], alone_logits) < 1e-4


def test_batched_decoding_cuts_each_row_at_its_own_eos():
    model = fixture_pipeline().model
    embeds = torch.randn(3, 4, model.llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    free, _ = model.generate_text_batch(embeds, max_new_tokens=6, eos_token_id=None)
    eos = int(free[1][2])  # make the third token of row 1 its end of sequence
    ids, logits = model.generate_text_batch(embeds, max_new_tokens=6, eos_token_id=eos)
    for row in range(3):
        stop = next((k + 1 for k, t in enumerate(free[row].tolist()) if t == eos), 6)
        assert torch.equal(ids[row], free[row][:stop]) and len(logits[row]) == stop
    assert len(ids[1]) <= 3


def test_batched_decoding_ends_each_row_where_it_fills_max_length():
    model = fixture_pipeline().model
    embeds = torch.randn(3, 6, model.llm.config.hidden_size, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, :2] = mask[2, :4] = 0  # prompts of 6, 4 and 2 positions
    free, _ = model.generate_text_batch(embeds, mask, max_new_tokens=8, eos_token_id=None)
    ids, logits = model.generate_text_batch(embeds, mask, max_new_tokens=8, max_length=7, eos_token_id=None)
    # Prompt and answer fill at most 7 positions; the answer under the cap is unchanged.
    assert [len(row) for row in ids] == [1, 3, 5] and [len(row) for row in logits] == [1, 3, 5]
    assert all(torch.equal(row, whole[: len(row)]) for row, whole in zip(ids, free))
    (one,), _ = model.generate_text_batch(embeds[:1], max_new_tokens=8, max_length=4, eos_token_id=None)
    assert len(one) == 1  # a prompt already over max_length still gets a token, as in transformers
    eos = int(free[2][1])
    ids, _ = model.generate_text_batch(embeds, mask, max_new_tokens=8, max_length=7, eos_token_id=eos)
    stops = [
        next((k + 1 for k, t in enumerate(row[:cap].tolist()) if t == eos), cap) for row, cap in zip(free, (1, 3, 5))
    ]
    assert [len(row) for row in ids] == stops and stops[2] <= 2


def test_fixture_depth_generation_replay_and_code_filtering():
    c = cases()
    model = fixture_pipeline().model
    with torch.no_grad():
        codes, guided = model.sample_codes(c["dt.gen.hidden"][:, 0], cfg=3.0, forced=c["dt.gen.sampled"].T)
        out_features = model.vision_tower.codes_to_latent(c["dt.gen.code"][:, 0])
    assert max_abs(guided, c["dt.gen.cfg_logits"]) < 1e-4
    assert torch.equal(codes.repeat(2, 1), c["dt.gen.code"][:, 0])
    assert max_abs(out_features, c["dt.gen.out_features"][:, 0]) < 1e-5
    # The shared top-k 900 / top-p 0.96 filter gives the distribution the official sampler draws from.
    probs = filter_top_k_top_p(c["dt.gen.cfg_logits"], 900, 0.96).softmax(-1)
    assert max_abs(probs, c["dt.gen.filtered_probs"]) < 1e-6


def test_fixture_end_to_end_generation_replay():
    c = cases()
    model = fixture_pipeline().model
    ids, mask = c["gen.input_ids"], c["gen.attention_mask"]
    assert torch.equal(positions_from_mask(mask), c["gen.position_ids"])
    forced = c["e2e.image_ids"][:2]
    with torch.no_grad():
        out = model.generate_codes(ids, mask, 16, cfg=3.0, forced_codes=forced, trace=True)
        uncached = model.visual_hidden(ids, mask, c["e2e.image_ids"])
        image = ((model.decode_codes(forced) + 1) * 127.5).clamp(0, 255)
    assert max_abs(out.hidden, c["e2e.hidden"]) < 1e-4
    assert max_abs(uncached.transpose(0, 1), c["e2e.hidden"]) < 1e-4
    assert max_abs(out.logits, c["e2e.cfg_logits"]) < 1e-4
    assert torch.equal(out.codes, forced)
    assert max_abs(image, c["e2e.image"]) < 1e-3


def test_fixture_depth_sampling_draws_the_official_codes_from_the_same_seed():
    # Same probabilities and the same CPU multinomial stream as the recorded run (torch.manual_seed(1236)).
    c = cases()
    model = fixture_pipeline().model
    state = torch.get_rng_state()
    try:
        torch.manual_seed(1236)
        with torch.no_grad():
            codes, _ = model.sample_codes(c["dt.gen.hidden"][:, 0], cfg=3.0)
    finally:
        torch.set_rng_state(state)
    assert torch.equal(codes.T, c["dt.gen.sampled"])


def test_code_generation_checks_codes_once_not_per_token(monkeypatch):
    from arvision.tokenizers.residual_vq import ResidualQuantizer

    model = tiny_vila_u()
    calls = []
    original = ResidualQuantizer.check_codes
    monkeypatch.setattr(ResidualQuantizer, "check_codes", lambda self, codes: calls.append(1) or original(self, codes))
    ids = torch.tensor([[1, 2, 3], [1, 2, 3]])
    model.generate_codes(ids, torch.ones_like(ids), 6, generator=torch.Generator().manual_seed(0))
    assert calls == []  # sampled codes are valid by construction: no per-token device sync
    forced = torch.zeros(1, 6, model.config.depth.depth, dtype=torch.long)
    forced[0, 0, 0] = model.vision_tower.quantizer.n_embed  # the padding row
    with pytest.raises(InputError, match="codes must be in"):
        model.generate_codes(ids, torch.ones_like(ids), 6, forced_codes=forced)
