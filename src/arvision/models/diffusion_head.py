"""Residual diffusion head (MAR's MLP "diffusion loss", as used by HART for the last scale).

Per token, a small MLP with AdaLN denoises the continuous residual between the encoder latent and
the sampled discrete code, conditioned on the transformer state ``z``. The diffusion is iDDPM:
cosine schedule over 1000 steps, epsilon prediction with a learned-range variance, trained with
MSE + the variational bound; sampling is ancestral DDPM respaced to 8 steps with x0 clipped to
[-1, 1]. Targets are divided by ``vae_scale`` (0.6) for training and samples multiplied by it.

Names (``net.time_embed``, ``net.res_blocks.{k}.adaLN_modulation.1`` ...) match the official
``diffloss.*`` keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from arvision.errors import InputError
from arvision.nn.adaln import ada_linear, modulate
from arvision.nn.sampling import Generators, draw_device, per_sample
from arvision.nn.timestep import TimestepEmbedder

NUM_TRAIN_STEPS = 1000


def cosine_betas(num_steps: int = NUM_TRAIN_STEPS, max_beta: float = 0.999) -> torch.Tensor:
    """iDDPM cosine schedule: beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta), float64 [T]."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float64, device="cpu")  # tables stay on CPU, even under a meta device


def space_timesteps(num_steps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Original timesteps kept when respacing, e.g. ``"8"`` of 1000 -> [0, 143, 285, ..., 999].

    Each of ``len(section_counts)`` equal portions of the process contributes evenly strided steps
    (the iDDPM rule, rounding with Python's ``round``). ``"ddimN"`` is the DDIM paper's striding, as in
    the official code: ``range(0, num_steps, s)`` for the smallest whole stride ``s`` giving N steps
    (``"ddim8"`` of 1000 -> [0, 125, ..., 875]). Anything else is an InputError naming the value.
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        return _ddim_timesteps(num_steps, section_counts)
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise InputError(
                f"num_sampling_steps must be a step count ('8'), counts per section ('4,2,2') or 'ddimN', "
                f"got {section_counts!r}"
            ) from None
    if not section_counts or min(section_counts) < 0 or sum(section_counts) == 0:
        raise InputError(f"sampling step counts must be >= 0 and keep at least one step, got {list(section_counts)}")
    size_per, extra = divmod(num_steps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise InputError(f"cannot divide a section of {size} diffusion steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def _ddim_timesteps(num_steps: int, spec: str) -> list[int]:
    """``"ddimN"`` -> ``range(0, num_steps, s)`` with the smallest stride ``s`` that gives exactly N steps."""
    count = spec[len("ddim") :]
    if not count.isdigit():
        raise InputError(f"num_sampling_steps {spec!r}: 'ddim' must be followed by a step count, e.g. 'ddim8'")
    for stride in range(1, num_steps):
        if len(range(0, num_steps, stride)) == int(count):
            return list(range(0, num_steps, stride))
    raise InputError(f"num_sampling_steps {spec!r}: no whole stride takes exactly {count} of {num_steps} steps")


class DiffusionSchedule:
    """Coefficients of a (respaced) Gaussian diffusion, float64 [S] tensors indexed by respaced step.

    ``timestep_map[s]`` is the original step index fed to the network at respaced step ``s``.
    """

    def __init__(self, base_betas: torch.Tensor, use_timesteps: Sequence[int]):
        base_abar = torch.cumprod(1.0 - base_betas, dim=0)
        keep = sorted(use_timesteps)
        self.timestep_map = torch.tensor(keep, dtype=torch.long, device="cpu")
        abar = base_abar[self.timestep_map]
        prev = torch.cat((torch.ones(1, dtype=torch.float64, device="cpu"), abar[:-1]))
        betas = 1.0 - abar / prev
        self.betas, self.alphas_cumprod, self.alphas_cumprod_prev = betas, abar, prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / abar - 1).sqrt()
        self.posterior_variance = betas * (1.0 - prev) / (1.0 - abar)
        # The posterior variance is 0 at step 0; its log is clipped to the value of step 1, or with a single
        # step (where the official code fails) to that step's beta: step 0 adds no noise, but its log-variance
        # must be finite for the learned-range mix not to make NaN.
        floor = self.posterior_variance[1:2] if len(keep) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat((floor, self.posterior_variance[1:])).log()
        self.posterior_mean_coef1 = betas * prev.sqrt() / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - abar)
        self.log_betas = betas.log()

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @staticmethod
    def at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-row coefficient [N, 1] in fp32 (the official code casts the float64 tables this way)."""
        return values.to(t.device)[t].float()[:, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.at(self.sqrt_alphas_cumprod, t) * x0 + self.at(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        mean = self.at(self.posterior_mean_coef1, t) * x0 + self.at(self.posterior_mean_coef2, t) * x_t
        return mean, self.at(self.posterior_log_variance_clipped, t).expand_as(x_t)

    def p_mean_logvar(
        self, x_t: torch.Tensor, t: torch.Tensor, net_out: torch.Tensor, clip: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model mean and log-variance from the raw output [N, 2C] = (eps | v), learned-range variance."""
        eps, v = net_out.chunk(2, dim=-1)
        frac = (v + 1) / 2
        log_var = frac * self.at(self.log_betas, t) + (1 - frac) * self.at(self.posterior_log_variance_clipped, t)
        x0 = self.at(self.sqrt_recip_alphas_cumprod, t) * x_t - self.at(self.sqrt_recipm1_alphas_cumprod, t) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.posterior(x0, x_t, t)
        return mean, log_var


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_nll(x, mean, log_scale):
    """-log p(x) of a Gaussian discretised into 1/127.5-wide bins on [-1, 1] (iDDPM decoder term)."""
    centered, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return -torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _noise(given: torch.Tensor | None, shape, generator: Generators, device) -> torch.Tensor:
    """Replayed noise when given, else a fresh standard normal draw from ``generator`` (a list of generators
    draws equal shares of the rows, one each)."""
    if given is not None:
        return given.to(device, torch.float32)

    def draw(rows: slice, gen: torch.Generator | None) -> torch.Tensor:
        draws = torch.randn((rows.stop - rows.start, *shape[1:]), generator=gen, device=draw_device(gen, device))
        return draws.to(device)

    # A list holds one generator per sample, each drawing its equal share of the rows; the caller checks that it
    # has one per sample (the head sees rows, not samples).
    samples = None if generator is None or isinstance(generator, torch.Generator) else len(generator)
    return per_sample(generator, shape[0], draw, samples)


class ResBlock(nn.Module):
    """x + gate * MLP(LN(x) * (1 + scale) + shift); modulation order (shift, scale, gate). [N, W] -> [N, W]."""

    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = ada_linear(width, width, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """LN (no affine) -> modulate (shift, scale) -> Linear. [N, W] -> [N, out]."""

    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = ada_linear(width, width, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class MLPAdaLN(nn.Module):
    """Denoiser: x_t [N, C], original timestep [N], condition z [N, D] -> [N, 2C] = (eps | v)."""

    def __init__(self, in_channels: int, width: int, cond_dim: int, depth: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * in_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(z)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def initialize_weights(self) -> None:
        """DiT/MAR init: xavier linears, small timestep MLP, zeroed modulation and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.res_blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


class ResidualDiffusionHead(nn.Module):
    """Per-token diffusion over the ``latent_channels``-dim residual, conditioned on z [N, cond_dim]."""

    def __init__(
        self,
        latent_channels: int,
        cond_dim: int,
        width: int = 1024,
        depth: int = 6,
        num_sampling_steps: str | int = "8",
        vae_scale: float = 0.6,
    ):
        super().__init__()
        self.latent_channels, self.vae_scale = latent_channels, vae_scale
        self.net = MLPAdaLN(latent_channels, width, cond_dim, depth)
        self.train_schedule = DiffusionSchedule(cosine_betas(), range(NUM_TRAIN_STEPS))
        self.sample_schedule = self.sampling_schedule(num_sampling_steps)

    @staticmethod
    def sampling_schedule(num_sampling_steps: str | int) -> DiffusionSchedule:
        """The training schedule respaced to ``num_sampling_steps`` (iDDPM's section string, e.g. "8", or
        "ddimN"; see :func:`space_timesteps`)."""
        return DiffusionSchedule(cosine_betas(), space_timesteps(NUM_TRAIN_STEPS, num_sampling_steps))

    def guided_output(
        self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor, z_uncond: torch.Tensor | None, guidance: float
    ) -> torch.Tensor:
        """Raw output (eps | v) for x [N, C]. With ``z_uncond``, eps = eps_c (1 + w) - w eps_u (HART's
        form of CFG, w = ``guidance``) and v comes from the conditional branch."""
        if z_uncond is None:
            return self.net(x, t, z)
        out = self.net(torch.cat((x, x)), torch.cat((t, t)), torch.cat((z, z_uncond)))
        cond, uncond = out.chunk(2, dim=0)
        c = self.latent_channels
        eps = cond[:, :c] * (1 + guidance) - guidance * uncond[:, :c]
        return torch.cat((eps, cond[:, c:]), dim=-1)

    @torch.no_grad()
    def sample(
        self,
        z: torch.Tensor,
        *,
        z_uncond: torch.Tensor | None = None,
        guidance: float = 0.0,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
        step_noise: Sequence[torch.Tensor] | None = None,
        generator: Generators = None,
        callback: StepCallback | None = None,
        schedule: DiffusionSchedule | None = None,
    ) -> torch.Tensor:
        """Ancestral DDPM sample of the residual for every row of z [N, D] -> [N, C] (already x vae_scale).

        ``noise`` (x_T) and ``step_noise[i]`` (noise added after step i) replace draws from
        ``generator``, so recorded noise can be replayed (a list of generators: one per equal share of the rows,
        e.g. per image of B*L rows). ``callback(i, t_orig, x_t, raw_out)`` sees
        every step. ``schedule`` (from :meth:`sampling_schedule`) replaces the configured step count.
        ``z_uncond`` [N, D] guides eps with weight ``guidance``, except that a guidance of exactly 1 ignores it.
        """
        if guidance == 1.0:
            # Official behaviour (DiffLoss.sample's ``if not cfg == 1.0``): a guidance of exactly 1 samples the
            # conditional branch alone, eps_c rather than 2 eps_c - eps_u. Kept for parity with the checkpoints.
            z_uncond = None
        sched, n, device = schedule or self.sample_schedule, z.shape[0], z.device
        shape = (n, self.latent_channels)
        x = _noise(noise, shape, generator, device)
        for i, step in enumerate(reversed(range(sched.num_steps))):
            t = torch.full((n,), step, dtype=torch.long, device=device)
            t_orig = sched.timestep_map.to(device)[t]
            out = self.guided_output(x.to(z.dtype), t_orig, z, z_uncond, guidance).float()
            if callback is not None:
                callback(i, t_orig, x, out)
            mean, log_var = sched.p_mean_logvar(x, t, out, clip=True)
            if step == 0:
                x = mean
                break
            eps = _noise(None if step_noise is None else step_noise[i], shape, generator, device)
            x = mean + torch.exp(0.5 * log_var) * eps * temperature
        return x * self.vae_scale

    def loss(
        self,
        target: torch.Tensor,
        z: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-row iDDPM hybrid loss [N]: MSE on eps + the variational bound for the variance (with the
        mean stopped), for residual targets [N, C] (unscaled) and conditions z [N, D]."""
        sched, device = self.train_schedule, target.device
        x0 = target.float() / self.vae_scale
        if t is None:
            draws_on = draw_device(generator, device)
            t = torch.randint(0, sched.num_steps, (x0.shape[0],), generator=generator, device=draws_on).to(device)
        noise = _noise(noise, x0.shape, generator, device)
        x_t = sched.q_sample(x0, t, noise)
        out = self.net(x_t.to(z.dtype), t, z).float()
        eps, v = out.chunk(2, dim=-1)
        mse = (noise - eps).pow(2).mean(-1)

        frozen = torch.cat((eps.detach(), v), dim=-1)
        mean, log_var = sched.p_mean_logvar(x_t, t, frozen, clip=False)
        true_mean, true_log_var = sched.posterior(x0, x_t, t)
        kl = _normal_kl(true_mean, true_log_var, mean, log_var).mean(-1) / math.log(2.0)
        nll = _discretized_gaussian_nll(x0, mean, 0.5 * log_var).mean(-1) / math.log(2.0)
        return mse + torch.where(t == 0, nll, kl)
