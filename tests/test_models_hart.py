import re

import pytest
import torch

from arvision.errors import CheckpointError, InputError
from arvision.models.hart import (
    PRESETS,
    HartConfig,
    HartTransformer,
    block_causal_mask,
    check_schedule,
    scale_levels,
)
from hart_common import load_tiny_hart

ATOL = 1e-4


def tf_forward(model, c, **kw):
    with torch.no_grad():
        return model(
            c["tok_var_input"],
            context=c["ctx_context"],
            context_mask=c["ctx_mask"],
            context_position_ids=c["ctx_position_ids"],
            **kw,
        )


def test_teacher_forced_logits_match_official(hart_cases, tiny_hart):
    logits, h_last = tf_forward(tiny_hart, hart_cases)
    torch.testing.assert_close(logits, hart_cases["tf_logits"], atol=ATOL, rtol=0)
    assert h_last.shape == (2, 64, 64)


def test_condition_and_block_io_match_official(hart_cases, tiny_hart):
    c = hart_cases
    torch.testing.assert_close(tiny_hart.embed_condition(c["ctx_context"]), c["tf_cond_BD"], atol=ATOL, rtol=0)
    seen = {}

    def record_input(module, args):
        seen["in"] = args[0]

    def record_output(module, args, out):
        seen["out"] = out

    hooks = [
        tiny_hart.blocks[0].register_forward_pre_hook(record_input),
        tiny_hart.blocks[-1].register_forward_hook(record_output),
    ]
    try:
        tf_forward(tiny_hart, c)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(seen["in"], c["tf_block_in"], atol=ATOL, rtol=0)
    torch.testing.assert_close(seen["out"], c["tf_block_out_last"], atol=ATOL, rtol=0)


def test_subsampled_last_scale_matches_official(hart_cases, tiny_hart):
    keep = hart_cases["tf_sub_keep_idx"]
    logits, h_last = tf_forward(tiny_hart, hart_cases, keep_last=keep)
    n = keep.shape[1]
    assert h_last.shape == (2, n, 64)
    torch.testing.assert_close(logits[:, -n:], hart_cases["tf_sub_logits_last"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[:, :-n], hart_cases["tf_logits"][:, :-64], atol=ATOL, rtol=0)


def test_pass_over_the_first_scales_equals_the_head_of_the_full_pass(hart_cases, tiny_hart):
    full, _ = tf_forward(tiny_hart, hart_cases)
    patch_nums = tiny_hart.config.patch_nums
    for scales in range(1, len(patch_nums)):
        rows = sum(p * p for p in patch_nums[:scales])
        logits, h_last = tf_forward(tiny_hart, hart_cases, scales=scales)
        assert logits.shape[1] == rows and h_last.shape[1] == patch_nums[scales - 1] ** 2
        torch.testing.assert_close(logits, full[:, :rows], atol=1e-5, rtol=0)


def test_pass_over_the_first_scales_rejects_bad_requests(hart_cases, tiny_hart):
    with pytest.raises(ValueError, match="scales must be between 1 and"):
        tf_forward(tiny_hart, hart_cases, scales=0)
    with pytest.raises(ValueError, match="keep_last"):
        tf_forward(tiny_hart, hart_cases, scales=2, keep_last=hart_cases["tf_sub_keep_idx"])


def test_raw_weights_match_official(hart_cases):
    logits, _ = tf_forward(load_tiny_hart("pytorch_model.bin"), hart_cases)
    torch.testing.assert_close(logits[:, :14], hart_cases["tf_raw_logits_head"], atol=ATOL, rtol=0)


def test_block_causal_mask_never_looks_at_later_scales():
    levels = scale_levels([3, 4, 9])
    mask = block_causal_mask(levels)
    assert mask.shape == (16, 16)
    assert mask[:3, :3].all() and not mask[:3, 3:].any()  # context: bidirectional among itself only
    assert mask[3:7, :7].all() and not mask[3:7, 7:].any()
    assert mask[7:].all()


def test_changing_a_scale_only_changes_its_own_and_later_predictions(hart_cases, tiny_hart):
    c = hart_cases
    base, _ = tf_forward(tiny_hart, c)
    x = c["tok_var_input"].clone()
    start = 4  # inputs: scale 1 (4 tokens) then scale 2 (9 tokens)...
    x[:, start : start + 9] += 1.0
    with torch.no_grad():
        changed, _ = tiny_hart(
            x, context=c["ctx_context"], context_mask=c["ctx_mask"], context_position_ids=c["ctx_position_ids"]
        )
    rows_before = 1 + start  # logit rows produced by the context's last token and scale 1
    torch.testing.assert_close(changed[:, :rows_before], base[:, :rows_before], atol=1e-6, rtol=0)
    assert (changed[:, rows_before:] - base[:, rows_before:]).abs().amax() > 1e-3


def test_released_preset_parameter_count():
    with torch.device("meta"):
        model = HartTransformer(PRESETS["hart-0.7b-1024px"]())
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 732.5e6) / 732.5e6 < 0.005
    assert count == 732_495_936  # the official model's count at this shape


def test_class_conditional_presets_match_paper_sizes():
    sizes = {"hart-d20": 649e6, "hart-d24": 1.0e9, "hart-d30": 2.0e9}
    for name, expected in sizes.items():
        with torch.device("meta"):
            model = HartTransformer(PRESETS[name]())
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - expected) / expected < 0.08, (name, count)


def test_class_conditional_forward_shapes():
    cfg = HartConfig(
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        patch_nums=(1, 2, 4),
        vocab_size=50,
        latent_channels=4,
        diff_width=16,
        diff_depth=1,
    )
    model = HartTransformer(cfg).eval()
    x = torch.randn(3, 4 + 16, 4)
    logits, h_last = model(x, labels=torch.tensor([0, 5, 10]))
    assert logits.shape == (3, 21, 50) and h_last.shape == (3, 16, 32)


def test_unsupported_official_options_are_refused():
    llama = {"attn_type": "llama", "mlp_type": "llama"}
    with pytest.raises(CheckpointError, match="attn_type"):
        HartConfig.from_official({**llama, "attn_type": "gpt2"}, vocab_size=10, latent_channels=4)
    with pytest.raises(CheckpointError, match="attn_type"):  # the official class default is gpt2
        HartConfig.from_official({}, vocab_size=10, latent_channels=4)
    with pytest.raises(CheckpointError, match="shared_aln"):
        HartConfig.from_official({**llama, "shared_aln": True}, vocab_size=10, latent_channels=4)
    assert HartConfig.from_official(llama, vocab_size=10, latent_channels=4).context_token == 77
    with pytest.raises(ValueError, match="divisible"):
        HartConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="text-conditional HART needs context_token >= 1, got 0"):
        HartConfig(context_token=0)
    assert HartConfig(context_token=0, num_classes=10).prefix_len == 1  # classes: the context is unused


def test_schedules_start_at_one_and_fit_the_level_table():
    """Scale 0 is predicted from one position (text and class models alike): a first scale above 1x1 is refused
    when the config is built, from a checkpoint it is the checkpoint's error."""
    with pytest.raises(InputError, match=r"first scale must be 1x1.*\(2, 4, 8\)"):
        HartConfig(patch_nums=(2, 4, 8))
    with pytest.raises(InputError, match=r"first scale must be 1x1"):
        HartConfig(patch_nums=(2, 4, 8), num_classes=10)
    llama = {"attn_type": "llama", "mlp_type": "llama"}
    with pytest.raises(CheckpointError, match="HART config: HART's first scale must be 1x1"):
        HartConfig.from_official({**llama, "patch_nums": [2, 4]}, vocab_size=10, latent_channels=4)
    with pytest.raises(CheckpointError, match="first scale must be 1x1"):
        HartConfig.from_dict({**HartConfig().to_dict(), "patch_nums": [3, 6]})
    table = HartConfig(patch_nums=(1, 2, 4), use_timestep_embed=False)
    assert check_schedule([1, 2, 3, 4], HartConfig(patch_nums=(1, 2, 4))) == (1, 2, 3, 4)  # timestep embedding
    assert check_schedule([1, 3, 5], table) == (1, 3, 5)
    with pytest.raises(InputError, match="has 4 scales but this model's level table has 3"):
        check_schedule([1, 2, 3, 4], table)


def test_diffusion_step_specs_are_checked_with_the_config():
    assert HartConfig(num_sampling_steps="ddim4").num_sampling_steps == "ddim4"
    model = HartTransformer(
        HartConfig(embed_dim=32, depth=1, num_heads=2, diff_width=8, diff_depth=1, num_sampling_steps="ddim4")
    )
    assert model.diffloss.sample_schedule.timestep_map.tolist() == [0, 250, 500, 750]
    llama = {"attn_type": "llama", "mlp_type": "llama"}
    with pytest.raises(CheckpointError, match="num_sampling_steps must be"):
        HartConfig.from_official({**llama, "num_sampling_steps": "fast"}, vocab_size=10, latent_channels=4)


def test_config_round_trip():
    cfg = PRESETS["hart-0.7b-1024px"]()
    assert HartConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CheckpointError, match="unknown"):
        HartConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_init_weights_starts_blocks_near_identity():
    cfg = HartConfig(
        embed_dim=32,
        depth=2,
        num_heads=2,
        context_token=4,
        context_dim=8,
        patch_nums=(1, 2, 4),
        vocab_size=50,
        latent_channels=4,
        diff_width=16,
        diff_depth=1,
    )
    model = HartTransformer(cfg)
    model.init_weights()
    assert model.blocks[0].ada_lin[1].weight[:64].abs().max() < 1e-4  # gamma rows
    assert model.diffloss.net.final_layer.linear.weight.abs().max() == 0
    x, ctx = torch.randn(2, 20, 4), torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.bool)
    seen = {}
    model.blocks[-1].register_forward_hook(lambda m, a, out: seen.update(out=out, inp=a[0]) or None)
    model(x, context=ctx, context_mask=mask, context_position_ids=mask.long().cumsum(1) - 1)
    torch.testing.assert_close(seen["out"], seen["inp"], atol=1e-4, rtol=0)


def test_teacher_forcing_input_from_recorded_indices(hart_cases, tiny_hart, tiny_tokenizer):
    """Tokenizer indices -> AR input (quantizer) -> logits: the official training data path end to end."""
    c = hart_cases
    indices = [c[f"tok_idx_s{s}"] for s in range(6)]
    x = tiny_tokenizer.quantize.indices_to_ar_input(indices, tiny_hart.config.patch_nums)
    torch.testing.assert_close(x, c["tok_var_input"], atol=1e-5, rtol=0)
    f = tiny_tokenizer.encode_latent(c["tok_images"])
    _, r_pre = tiny_tokenizer.quantize.latent_to_indices(f, tiny_hart.config.patch_nums)
    torch.testing.assert_close(r_pre.flatten(2).transpose(1, 2), c["tok_r_pre"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("embed_dim", "abc", "embed_dim must be a whole number >= 1, got 'abc'"),
        ("embed_dim", None, "embed_dim must be a whole number >= 1, got None"),
        ("num_heads", 0, "num_heads must be a whole number >= 1, got 0"),
        ("depth", "8", "depth must be a whole number >= 1, got '8'"),
        ("vocab_size", -1, "vocab_size must be a whole number >= 1, got -1"),
        ("num_classes", "x", "num_classes must be a whole number >= 0, got 'x'"),
        ("mlp_ratio", "four", "mlp_ratio must be a number > 0, got 'four'"),
        ("norm_eps", "x", "norm_eps must be a number > 0, got 'x'"),
        ("rope_theta", 0, "rope_theta must be a number > 0, got 0"),
        ("cond_drop_rate", 1.0, "cond_drop_rate must be a number >= 0 and < 1, got 1.0"),
        ("use_timestep_embed", "yes", "use_timestep_embed must be true or false, got 'yes'"),
        ("patch_nums", 5, "patch_nums must be a list of whole numbers, got 5"),
        ("patch_nums", [1, 2.5], "patch_nums must be a list of whole numbers, got [1, 2.5]"),
    ],
)
def test_config_fields_of_the_wrong_type_or_range_are_named(field, value, message):
    # an InputError (a ValueError): training reports it as a setting, checkpoints as their file's problem
    with pytest.raises(InputError, match=re.escape(message)):
        HartConfig(**{field: value})
    with pytest.raises(CheckpointError, match=re.escape(f"llm/config.json: {message}")):
        HartConfig.from_dict({**HartConfig().to_dict(), field: value}, source="llm/config.json")
