import math

import pytest
import torch

from arvision.errors import InputError
from arvision.models.diffusion_head import ResidualDiffusionHead, cosine_betas, space_timesteps

ATOL = 1e-4


def test_respaced_schedule_matches_official(hart_cases, tiny_hart):
    sched = tiny_hart.diffloss.sample_schedule
    assert sched.timestep_map.tolist() == hart_cases["dh_timestep_map"].tolist() == space_timesteps(1000, "8")
    torch.testing.assert_close(sched.betas, hart_cases["dh_betas"], atol=1e-12, rtol=0)
    torch.testing.assert_close(sched.alphas_cumprod, hart_cases["dh_alphas_cumprod"], atol=1e-12, rtol=0)


def test_cosine_schedule_closed_form():
    betas = cosine_betas()
    abar = torch.cumprod(1 - betas, 0)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 142, 500, 998):
        assert math.isclose(abar[t].item(), f((t + 1) / 1000) / f(0), rel_tol=1e-9)
    assert betas.max().item() == 0.999


def test_network_and_cfg_outputs_match_official(hart_cases, tiny_hart):
    c, head = hart_cases, tiny_hart.diffloss
    with torch.no_grad():
        torch.testing.assert_close(head.net(c["dh_x"], c["dh_t"], c["dh_c"]), c["dh_out"], atol=ATOL, rtol=0)
        n = c["dh_cfg_x"].shape[0] // 2
        out = head.guided_output(
            c["dh_cfg_x"][:n], c["dh_cfg_t"][:n], c["dh_cfg_c"][:n], c["dh_cfg_c"][n:], float(c["dh_cfg_scale"])
        )
    torch.testing.assert_close(out, c["dh_cfg_out"][:n], atol=ATOL, rtol=0)


def _replay(head, c, prefix, guided):
    z = c[f"{prefix}_z"]
    n = z.shape[0] // 2 if guided else z.shape[0]
    xs = []
    out = head.sample(
        z[:n],
        z_uncond=z[n:] if guided else None,
        guidance=float(c["dh_cfg_scale"]) if guided else 0.0,
        noise=c[f"{prefix}_noise_init"],
        step_noise=c[f"{prefix}_noise_steps"][:, :n],
        callback=lambda i, t, x, o: xs.append(x),
    )
    torch.testing.assert_close(torch.stack(xs), c[f"{prefix}_x_steps"][:, :n], atol=ATOL, rtol=0)
    torch.testing.assert_close(out, c[f"{prefix}_out"][:n], atol=ATOL, rtol=0)


def test_sampler_replays_official_noise(hart_cases, tiny_hart):
    _replay(tiny_hart.diffloss, hart_cases, "dh_sample_nocfg", guided=False)
    _replay(tiny_hart.diffloss, hart_cases, "dh_sample_cfg", guided=True)


def test_sampler_equals_direct_ddpm_computation():
    """One run of the 8-step respaced sampler against the textbook formulas written out here."""
    torch.manual_seed(0)
    head = ResidualDiffusionHead(latent_channels=4, cond_dim=6, width=8, depth=1, num_sampling_steps="8")
    z = torch.randn(5, 6)
    g = torch.Generator().manual_seed(3)
    noise = [torch.randn(5, 4, generator=g) for _ in range(9)]
    got = head.sample(z, noise=noise[0], step_noise=noise[1:])

    abar_full = torch.cumprod(1 - cosine_betas(), 0)
    steps = [0, 143, 285, 428, 571, 714, 856, 999]
    abar = abar_full[steps]
    x = noise[0].double()
    for i, s in enumerate(reversed(range(8))):
        prev = abar[s - 1] if s > 0 else torch.tensor(1.0, dtype=torch.float64)
        beta = 1 - abar[s] / prev
        with torch.no_grad():
            out = head.net(x.float(), torch.full((5,), steps[s]), z).double()
        eps, v = out.chunk(2, -1)
        x0 = ((x - (1 - abar[s]).sqrt() * eps) / abar[s].sqrt()).clamp(-1, 1)
        mean = (prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - prev) * x) / (1 - abar[s])
        if s == 0:
            x = mean
            break
        post_var = beta * (1 - prev) / (1 - abar[s])
        log_var = (v + 1) / 2 * beta.log() + (1 - (v + 1) / 2) * post_var.log()
        x = mean + (0.5 * log_var).exp() * noise[1 + i].double()
    torch.testing.assert_close(got, (x * 0.6).float(), atol=1e-5, rtol=0)


def test_training_loss_is_finite_and_trains():
    torch.manual_seed(0)
    head = ResidualDiffusionHead(latent_channels=4, cond_dim=6, width=16, depth=1)
    target, z = torch.randn(32, 4) * 0.3, torch.randn(32, 6)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (32,), generator=g)
    noise = torch.randn(32, 4, generator=g)
    t[0] = 0  # the decoder-NLL branch
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    before = head.loss(target, z, t=t, noise=noise)
    assert before.shape == (32,) and torch.isfinite(before).all()
    before.mean().backward()
    opt.step()
    after = head.loss(target, z, t=t, noise=noise)
    assert after.mean() < before.mean()


def test_one_sampling_step_predicts_x0_in_one_go():
    """With a single step (where the official schedule fails to build) the sampler returns the clipped x0
    prediction from pure noise, scaled as every sample is, and nothing NaN."""
    torch.manual_seed(0)
    head = ResidualDiffusionHead(latent_channels=4, cond_dim=6, width=8, depth=1, num_sampling_steps="1")
    z, noise = torch.randn(5, 6), torch.randn(5, 4)
    got = head.sample(z, noise=noise, step_noise=[])
    abar = torch.cumprod(1 - cosine_betas(), 0)[0]  # space_timesteps(1000, "1") keeps step 0
    with torch.no_grad():
        eps = head.net(noise, torch.zeros(5, dtype=torch.long), z)[:, :4].double()
    x0 = ((noise.double() - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
    torch.testing.assert_close(got, (x0 * 0.6).float(), atol=1e-5, rtol=0)


def test_seeded_sampling_reproduces():
    head = ResidualDiffusionHead(latent_channels=4, cond_dim=6, width=8, depth=1)
    z = torch.randn(3, 6)
    a = head.sample(z, generator=torch.Generator().manual_seed(1))
    b = head.sample(z, generator=torch.Generator().manual_seed(1))
    c = head.sample(z, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_of_exactly_one_samples_the_conditional_branch_alone(tiny_hart):
    """The official DiffLoss.sample skips guidance when cfg == 1.0: eps_c alone, not 2 eps_c - eps_u."""
    head = tiny_hart.diffloss
    torch.manual_seed(0)
    z, z_uncond = torch.randn(6, 64), torch.randn(6, 64)

    def draw(**kw):
        return head.sample(z, generator=torch.Generator().manual_seed(5), **kw)

    alone = draw()
    torch.testing.assert_close(draw(z_uncond=z_uncond, guidance=1.0), alone, atol=0, rtol=0)
    assert not torch.allclose(draw(z_uncond=z_uncond, guidance=0.999), alone, atol=1e-3)  # guidance matters nearby


def test_ddim_respacing_follows_the_official_rule():
    """``"ddimN"``: range(0, 1000, s) for the smallest whole stride s giving exactly N steps."""
    assert space_timesteps(1000, "ddim8") == list(range(0, 1000, 125))
    assert space_timesteps(1000, "ddim7") == list(range(0, 1000, 143))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    head = ResidualDiffusionHead(latent_channels=4, cond_dim=6, width=8, depth=1, num_sampling_steps="ddim4")
    assert head.sample_schedule.timestep_map.tolist() == [0, 250, 500, 750]
    assert head.sample(torch.randn(3, 6), generator=torch.Generator().manual_seed(0)).shape == (3, 4)


def test_bad_step_specs_are_input_errors_naming_them():
    for spec, message in [
        ("ddim999", "no whole stride takes exactly 999 of 1000"),
        ("ddimx", "'ddim' must be followed by a step count"),
        ("eight", "got 'eight'"),
        ("0", "keep at least one step"),
        ("2000", "cannot divide a section of 1000 diffusion steps into 2000"),
    ]:
        with pytest.raises(InputError, match=message):
            space_timesteps(1000, spec)
