import pytest
import torch

from arvision.errors import CheckpointError, InputError
from arvision.models.hart import HartConfig, HartTransformer
from arvision.models.hart_sampler import (
    Condition,
    SamplingOptions,
    guidance_ratio,
    official_top_k,
    sample_latent,
)
from arvision.nn.sampling import guide

ATOL = 1e-4


@pytest.fixture(scope="module")
def replay(hart_cases, tiny_hart, tiny_tokenizer):
    c = hart_cases
    steps, zs = [], []
    hook = tiny_hart.decoder_norm.register_forward_hook(lambda m, a, out: zs.append(out))
    diff_x, diff_out, diff_t = [], [], []
    original_sample = tiny_hart.diffloss.sample

    def traced_sample(*args, **kwargs):
        kwargs["callback"] = lambda i, t, x, o: (diff_x.append(x), diff_out.append(o), diff_t.append(t[0].item()))
        replay_guidance.append(kwargs["guidance"])
        return original_sample(*args, **kwargs)

    replay_guidance = []
    tiny_hart.diffloss.sample = traced_sample
    try:
        f_hat = sample_latent(
            tiny_hart,
            tiny_tokenizer.quantize,
            Condition(c["ctx_context"], c["ctx_mask"], c["ctx_position_ids"]),
            SamplingOptions(cfg=float(c["inf_cfg"])),
            index_provider=lambda si, logits: c[f"inf_idx_s{si}"],
            diffusion_noise=(c["inf_diff_noise_init"], c["inf_diff_noise_steps"]),
            callback=steps.append,
            progress=False,
        )
    finally:
        hook.remove()
        del tiny_hart.diffloss.sample
    return dict(
        f_hat=f_hat, steps=steps, z=zs[-1], diff_x=diff_x, diff_out=diff_out, diff_t=diff_t, guidance=replay_guidance
    )


def test_replayed_logits_per_scale_match_official(hart_cases, replay):
    assert [s.si for s in replay["steps"]] == list(range(6))
    for step in replay["steps"]:
        torch.testing.assert_close(step.logits, hart_cases[f"inf_logits_s{step.si}"], atol=ATOL, rtol=0)


def test_replayed_latents_per_scale_match_official(hart_cases, replay):
    for step in replay["steps"][:-1]:
        torch.testing.assert_close(step.f_hat, hart_cases[f"inf_fhat_s{step.si}"], atol=ATOL, rtol=0)
        torch.testing.assert_close(step.next_map, hart_cases[f"inf_next_s{step.si}"], atol=ATOL, rtol=0)


def test_replayed_diffusion_matches_official(hart_cases, replay):
    c = hart_cases
    n = c["inf_diff_noise_init"].shape[0]
    torch.testing.assert_close(replay["z"].flatten(0, 1), c["inf_diff_z"], atol=ATOL, rtol=0)
    # guidance multiplies fp32 rounding of the two branches by up to 1 + 2w (~8 here): measured 1.1e-4
    torch.testing.assert_close(torch.stack(replay["diff_x"]), c["inf_diff_x_steps"], atol=2 * ATOL, rtol=0)
    raw = c["inf_diff_net_out_steps"]
    w = float(c["inf_diff_cfg"])
    eps = raw[:, :n, :8] * (1 + w) - w * raw[:, n:, :8]
    expected = torch.cat((eps, raw[:, :n, 8:]), dim=-1)
    torch.testing.assert_close(torch.stack(replay["diff_out"]), expected, atol=3 * ATOL, rtol=0)
    assert replay["diff_t"] == c["inf_diff_t_steps"].tolist()
    assert replay["guidance"] == [pytest.approx(float(c["inf_diff_cfg"]))]  # the stale ratio: 4.5 * 4/5


def test_replayed_residual_matches_official_sample(hart_cases, replay, tiny_tokenizer):
    c = hart_cases
    codes = tiny_tokenizer.quantize.lookup(c["inf_idx_s5"])
    residual = (replay["f_hat"] - c["inf_fhat_s4"] - codes).flatten(2).transpose(1, 2).reshape(-1, 8)
    torch.testing.assert_close(residual, c["inf_diff_sample"][: residual.shape[0]], atol=ATOL, rtol=0)


def test_replayed_final_latent_and_image_match_official(hart_cases, replay, tiny_tokenizer):
    torch.testing.assert_close(replay["f_hat"], hart_cases["inf_fhat_final"], atol=ATOL, rtol=0)
    with torch.no_grad():
        image = (tiny_tokenizer.decode(replay["f_hat"]) + 1) / 2
    torch.testing.assert_close(image, hart_cases["inf_image"], atol=ATOL, rtol=0)


def test_seeded_token_draws_equal_the_official_cpu_generator(hart_cases, tiny_hart, tiny_tokenizer):
    """Same multinomial stream as the official sampler's CPU generator seeded with g_seed."""
    c, steps = hart_cases, []
    sample_latent(
        tiny_hart,
        tiny_tokenizer.quantize,
        Condition(c["ctx_context"], c["ctx_mask"], c["ctx_position_ids"]),
        SamplingOptions(cfg=float(c["inf_cfg"])),
        generator=torch.Generator().manual_seed(int(c["inf_g_seed"])),
        callback=steps.append,
        progress=False,
    )
    for step in steps:
        assert torch.equal(step.indices, c[f"inf_idx_s{step.si}"])


def test_kv_cached_logits_equal_teacher_forced(hart_cases, tiny_hart, tiny_tokenizer):
    c, steps = hart_cases, []
    cond = Condition(c["ctx_context"], c["ctx_mask"], c["ctx_position_ids"])
    sample_latent(
        tiny_hart,
        tiny_tokenizer.quantize,
        cond,
        SamplingOptions(cfg=0.0, discrete_only=True),
        generator=torch.Generator().manual_seed(0),
        callback=steps.append,
        progress=False,
    )
    indices = [s.indices for s in steps]
    x = tiny_tokenizer.quantize.indices_to_ar_input(indices, tiny_hart.config.patch_nums)
    with torch.no_grad():
        logits, _ = tiny_hart(
            x, context=cond.context, context_mask=cond.context_mask, context_position_ids=cond.position_ids
        )
    cached = torch.cat([s.logits for s in steps], dim=1)
    torch.testing.assert_close(cached, logits, atol=1e-5, rtol=0)


def test_guidance_schedule_and_top_k():
    assert [guidance_ratio(si, 6) for si in range(6)] == [0.0, 0.2, 0.4, 0.6, 0.8, 0.8]
    assert guidance_ratio(13, 14) == 12 / 13
    assert [official_top_k(si, 4096) for si in (0, 6, 7, 13)] == [600, 600, 300, 300]
    assert official_top_k(0, 640) == 600 and official_top_k(0, 100) == 100
    cond, uncond = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    t = 4.5 * 0.4
    torch.testing.assert_close(guide(cond, uncond, 1 + t), (1 + t) * cond - t * uncond)


def _tiny_model(num_classes=0, **overrides):
    cfg = HartConfig(
        embed_dim=32,
        depth=1,
        num_heads=2,
        context_token=4,
        context_dim=8,
        patch_nums=(1, 2, 4),
        vocab_size=30,
        latent_channels=4,
        diff_width=16,
        diff_depth=1,
        num_classes=num_classes,
        **overrides,
    )
    torch.manual_seed(0)
    return HartTransformer(cfg).eval()


class _Quantizer:
    """Minimal stand-in with the tokenizer quantizer's interface (codebook + AR assembly)."""

    def __init__(self, vocab, channels):
        from arvision.tokenizers.multiscale_quantizer import MultiScaleQuantizer

        torch.manual_seed(1)
        self.q = MultiScaleQuantizer(vocab, channels, num_tracked_scales=3)
        self.embedding, self.channels = self.q.embedding, channels

    def next_ar_input(self, *args):
        return self.q.next_ar_input(*args)


def test_seed_reproducibility_and_modes():
    model, quant = _tiny_model(), _Quantizer(30, 4)
    cond = Condition(
        torch.randn(2, 4, 8),
        torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool(),
        torch.tensor([[0, 1, 1, 1], [0, 1, 2, 3]]),
    )

    def run(seed, **kw):
        opts = SamplingOptions(cfg=2.0, **kw)
        return sample_latent(model, quant, cond, opts, generator=torch.Generator().manual_seed(seed), progress=False)

    a, b, other = run(1), run(1), run(2)
    assert a.shape == (2, 4, 4, 4)
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert torch.equal(run(3, more_smooth=True), run(3, more_smooth=True))
    discrete = run(1, discrete_only=True)
    assert not torch.equal(discrete, a)


def test_a_constant_guidance_schedule_guides_every_scale_fully(monkeypatch):
    """ "constant" is the official sampler with the ramp's ratio 1 at every scale; "linear" is the official one."""
    from arvision.models import hart_sampler

    model, quant = _tiny_model(), _Quantizer(30, 4)
    cond = Condition(torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool), torch.arange(4).expand(2, 4))

    def run(schedule):
        opts = SamplingOptions(cfg=2.0, guidance_schedule=schedule)
        return sample_latent(model, quant, cond, opts, generator=torch.Generator().manual_seed(5), progress=False)

    linear, constant = run("linear"), run("constant")
    assert not torch.allclose(linear, constant)
    monkeypatch.setattr(hart_sampler, "guidance_ratio", lambda si, num_scales: 1.0)
    torch.testing.assert_close(run("linear"), constant, rtol=0, atol=0)
    with pytest.raises(InputError, match="guidance_schedule must be one of linear, constant, got 'cosine'"):
        SamplingOptions(guidance_schedule="cosine")


def test_class_conditional_sampling_runs():
    model, quant = _tiny_model(num_classes=5), _Quantizer(30, 4)
    out = sample_latent(
        model,
        quant,
        Condition(labels=torch.tensor([1, 4])),
        SamplingOptions(cfg=1.5),
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert out.shape == (2, 4, 4, 4) and torch.isfinite(out).all()


def test_last_scale_guidance_of_exactly_one_draws_the_conditional_residual(hart_cases, tiny_hart, tiny_tokenizer):
    """cfg 1.25 on the fixture's 6 scales gives t = 1.25 * 4/5 = 1.0 on the last scale, where the official head
    samples without guidance: the residual equals the one drawn from the conditional rows alone."""
    c = hart_cases
    assert 1.25 * guidance_ratio(5, 6) == 1.0
    calls, original = [], tiny_hart.diffloss.sample

    def traced(z, **kwargs):
        calls.append((z, kwargs, original(z, **kwargs)))
        return calls[-1][2]

    tiny_hart.diffloss.sample = traced
    try:
        sample_latent(
            tiny_hart,
            tiny_tokenizer.quantize,
            Condition(c["ctx_context"], c["ctx_mask"], c["ctx_position_ids"]),
            SamplingOptions(cfg=1.25),
            generator=torch.Generator().manual_seed(0),
            diffusion_noise=(c["inf_diff_noise_init"], c["inf_diff_noise_steps"]),
            progress=False,
        )
    finally:
        del tiny_hart.diffloss.sample
    ((z, kwargs, residual),) = calls
    assert kwargs["guidance"] == 1.0 and kwargs["z_uncond"] is not None
    alone = original(z, noise=kwargs["noise"], step_noise=kwargs["step_noise"])
    torch.testing.assert_close(residual, alone, atol=0, rtol=0)


def _text_condition(batch=2, tokens=4, dim=8):
    torch.manual_seed(2)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    return Condition(torch.randn(batch, tokens, dim), mask, torch.arange(tokens).expand(batch, -1))


def test_conditions_the_model_cannot_take_are_input_errors():
    model, quant = _tiny_model(), _Quantizer(30, 4)
    good = _text_condition()

    def run(cond, **kw):
        return sample_latent(model, quant, cond, SamplingOptions(cfg=1.0), progress=False, **kw)

    assert run(good).shape == (2, 4, 4, 4)
    for cond, message in [
        (_text_condition(dim=7), r"context has shape \(2, 4, 7\), the model expects \[B, 4, 8\]"),
        (_text_condition(tokens=3), r"context has shape \(2, 3, 8\), the model expects \[B, 4, 8\]"),
        (Condition(good.context, good.context_mask[:, :3], good.position_ids), r"context_mask has shape \(2, 3\)"),
        (Condition(good.context, good.context_mask, good.position_ids[:1]), r"position_ids has shape \(1, 4\)"),
        (Condition(good.context), "needs context, context_mask and position_ids; missing context_mask, position_ids"),
        (Condition(labels=torch.tensor([1, 2])), "class labels need a class-conditional model"),
    ]:
        with pytest.raises(InputError, match=message):
            run(cond)
    with pytest.raises(InputError, match="negative: context has shape"):
        run(good, negative=_text_condition(dim=7))
    with pytest.raises(InputError, match="negative condition has batch 1, the condition 2"):
        run(good, negative=_text_condition(batch=1))

    classes = _tiny_model(num_classes=5)
    for cond, message in [
        (good, "takes class labels, not a text context"),
        (Condition(labels=torch.tensor([1, 6])), r"labels must be in \[0, 5\]"),
        (Condition(labels=torch.tensor([1.0, 2.0])), "labels must be a non-empty \\[B\\] int64 tensor"),
    ]:
        with pytest.raises(InputError, match=message):
            sample_latent(classes, quant, cond, progress=False)


def test_a_quantizer_of_another_codebook_is_a_checkpoint_error():
    model, cond = _tiny_model(), _text_condition()
    for quant, message in [
        (_Quantizer(31, 4), "codebook has 31 codes but the transformer predicts 30"),
        (_Quantizer(30, 5), "latent has 5 channels but the transformer takes 4"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            sample_latent(model, quant, cond, progress=False)


def test_schedules_are_checked_like_the_pipeline_checks_them():
    quant, cond = _Quantizer(30, 4), _text_condition()
    with pytest.raises(InputError, match="first scale must be 1x1"):
        sample_latent(_tiny_model(), quant, cond, patch_nums=(2, 4), progress=False)
    table = _tiny_model(use_timestep_embed=False)  # a learned level embedding with 3 rows
    assert sample_latent(table, quant, cond, patch_nums=(1, 3, 4), progress=False).shape == (2, 4, 4, 4)
    with pytest.raises(InputError, match="has 4 scales but this model's level table has 3"):
        sample_latent(table, quant, cond, patch_nums=(1, 2, 3, 4), progress=False)


def test_prefix_indices_are_taken_and_only_the_later_scales_drawn(hart_cases, tiny_hart, tiny_tokenizer):
    c = hart_cases
    cond = Condition(c["ctx_context"], c["ctx_mask"], c["ctx_position_ids"])
    B = cond.batch
    codes = [torch.randint(tiny_hart.config.vocab_size, (B, pn * pn)) for pn in tiny_hart.config.patch_nums]

    def run(prefix, seed, **options):
        steps = []
        latent = sample_latent(
            tiny_hart,
            tiny_tokenizer.quantize,
            cond,
            SamplingOptions(cfg=2.0, **options),
            generator=torch.Generator().manual_seed(seed),
            prefix_indices=prefix,
            callback=steps.append,
            progress=False,
        )
        return latent, [step.indices for step in steps], [step.f_hat for step in steps]

    # every scale given, discrete only: the latent the tokenizer assembles from those codes
    latent, drawn, _ = run(codes, 0, discrete_only=True)
    assert all(torch.equal(a, b) for a, b in zip(drawn, codes))
    torch.testing.assert_close(latent, tiny_tokenizer.indices_to_latent(codes), atol=1e-5, rtol=0)
    # two scales given: those are kept (more_smooth's mixing too), the rest drawn from the seed
    _, first, smooth_latents = run(codes[:2], 0, more_smooth=True)
    _, other, plain_latents = run(codes[:2], 1)
    assert all(torch.equal(first[si], codes[si]) and torch.equal(other[si], codes[si]) for si in (0, 1))
    assert torch.equal(smooth_latents[1], plain_latents[1])  # given codes are not mixed
    assert not all(torch.equal(a, b) for a, b in zip(first[2:], other[2:]))
    # none given: the plain sampler, draw for draw
    plain = sample_latent(
        tiny_hart,
        tiny_tokenizer.quantize,
        cond,
        SamplingOptions(cfg=2.0),
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    assert torch.equal(run((), 3)[0], plain)
    with pytest.raises(InputError, match=r"prefix_indices\[1\] has shape"):
        run([codes[0], codes[0]], 0)
    with pytest.raises(InputError, match="scales of prefix_indices for a schedule of"):
        run([*codes, codes[-1]], 0)
    # the sampler itself names codes of another type or outside the vocabulary (not only the pipeline)
    with pytest.raises(InputError, match=r"prefix_indices\[0\] must be an integer tensor of codes, got torch.float32"):
        run([codes[0].float()], 0)
    with pytest.raises(InputError, match=r"prefix_indices\[0\] has codes outside the vocabulary"):
        run([codes[0] + 10**6], 0)
    assert torch.equal(run([codes[0].int()], 0)[0], run([codes[0]], 0)[0])  # any integer type is taken
