"""HART next-scale transformer (text- or class-conditional) with its residual diffusion head.

Sequence layout (text-to-image)::

    [ctx_0 ... ctx_{T-1} | scale 1 (pn_1^2 tokens) | ... | scale K-1 (pn_{K-1}^2 tokens)]

The ``T`` context tokens are the projected text-encoder states; the output at the last context
position predicts the 1x1 map of scale 0, the outputs of scale ``s`` predict scale ``s+1``.
Attention is block-causal by scale ("level"): context tokens see each other bidirectionally, image
tokens see the context, all earlier scales and their own scale. Context tokens get 1-D RoPE, image
tokens HART's 2-D RoPE on coordinates normalised to the final grid, offset by the last context
position. Blocks are Llama-style (RMSNorm, SwiGLU) with AdaLN driven by the pooled context.

The class-conditional variant (ImageNet, HART-d20/d24/d30) replaces the context by one start token
``class_emb(label) + pos_start`` and pools nothing (the class embedding is the AdaLN condition).

Parameter and buffer names match the official ``HARTForT2I`` state dict (reference section 2.5), so
released checkpoints load by name; the official persistent buffers ``lvl_1L``,
``attn_bias_for_masking`` and ``blocks.*.attn.zero_k_bias`` are not kept (the mask is built on the
fly, K has no bias) and :data:`OFFICIAL_BUFFERS` lets loaders ignore them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arvision.errors import CheckpointError, InputError
from arvision.models.diffusion_head import NUM_TRAIN_STEPS, ResidualDiffusionHead, space_timesteps
from arvision.nn.adaln import ada_linear, modulate
from arvision.nn.kv_cache import KVCache
from arvision.nn.rmsnorm import RMSNorm
from arvision.nn.rope import apply_rope, grid_positions, rope_1d, rope_2d
from arvision.nn.swiglu import SwiGLU, swiglu_hidden
from arvision.nn.timestep import TimestepEmbedder
from arvision.tokenizers.schedules import PATCH_NUMS, validate_schedule
from arvision.validation import check_flag, check_number

OFFICIAL_BUFFERS = re.compile(r"^(lvl_1L|attn_bias_for_masking|blocks\.\d+\.attn\.zero_k_bias)$")

# Defaults of the official config class where they differ from ours (used for keys a config omits).
_OFFICIAL_DEFAULTS = {
    "context_token": 77,
    "context_dim": 768,
    "use_timestep_embed": False,
    "attn_type": "gpt2",
    "mlp_type": "gpt2",
}
# Official config values we can reproduce; anything else is refused with a clear error.
_SUPPORTED = {
    "attn_type": ("llama",),
    "mlp_type": ("llama",),
    "shared_aln": (False,),
    "disable_aln": (False,),
    "use_cross_attn": (False,),
    "sampler": ("iddpm",),
    "diffusion_head_repeats": (1,),
}


@dataclass
class HartConfig:
    """Shape and options of a HART transformer; field names follow the official ``llm/config.json``.

    ``vocab_size`` and ``latent_channels`` come from the tokenizer config in official releases.
    ``num_classes > 0`` builds the class-conditional variant (``context_token`` is then unused).
    """

    embed_dim: int = 1024
    depth: int = 16
    num_heads: int = 16
    mlp_ratio: float = 4.0
    context_token: int = 300
    context_dim: int = 1536
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    use_timestep_embed: bool = True
    sep_aln_pooling_mode: str = "max"
    attn_l2_norm: bool = False
    use_context_norm: bool = False
    diff_width: int = 1024
    diff_depth: int = 6
    num_sampling_steps: str = "8"
    diffusion_batch_mul: int = 4
    norm_eps: float = 1e-6
    cond_drop_rate: float = 0.1
    vocab_size: int = 4096
    latent_channels: int = 32
    num_classes: int = 0
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        # Types and ranges first: a wrong one would otherwise surface deep inside torch (or only at the
        # first generation, for norm_eps and rope_theta). InputError is a ValueError, so callers that
        # build configs from user settings (training) and from checkpoints (_checked) both name it.
        sizes = ("embed_dim", "depth", "num_heads", "context_dim", "diff_width", "diff_depth", "diffusion_batch_mul")
        for name in (*sizes, "vocab_size", "latent_channels"):
            check_number(getattr(self, name), name, whole=True, minimum=1)
        for name in ("context_token", "num_classes"):
            check_number(getattr(self, name), name, whole=True, minimum=0)
        for name in ("mlp_ratio", "norm_eps", "rope_theta"):
            check_number(getattr(self, name), name, above=0)
        check_number(self.cond_drop_rate, "cond_drop_rate", minimum=0, below=1)
        for name in ("use_timestep_embed", "attn_l2_norm", "use_context_norm"):
            check_flag(getattr(self, name), name)
        self.patch_nums = check_schedule(self.patch_nums)
        self.num_sampling_steps = str(self.num_sampling_steps)
        space_timesteps(NUM_TRAIN_STEPS, self.num_sampling_steps)  # refuses a step spec the head cannot respace
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError("head dim must be divisible by 4 for the 2-D RoPE")
        if not self.class_conditional and self.context_token < 1:
            # the last context position predicts scale 0 and the null condition attends to the first
            raise ValueError(f"a text-conditional HART needs context_token >= 1, got {self.context_token}")
        if self.sep_aln_pooling_mode not in ("max", "avg"):
            raise ValueError(f"sep_aln_pooling_mode must be 'max' or 'avg', got {self.sep_aln_pooling_mode!r}")

    @property
    def class_conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def prefix_len(self) -> int:
        """Tokens before the first image scale: the context, or the single class token."""
        return 1 if self.class_conditional else self.context_token

    @classmethod
    def from_official(
        cls, llm_config: Mapping[str, Any], *, vocab_size: int, latent_channels: int, source: str = "HART config"
    ) -> HartConfig:
        """Build from an official ``llm/config.json`` dict plus the tokenizer's vocab and channels; errors name
        ``source`` (the file)."""
        llm_config = {**_OFFICIAL_DEFAULTS, **llm_config}
        for key, allowed in _SUPPORTED.items():
            if key in llm_config and llm_config[key] not in allowed:
                supported = ", ".join(map(repr, allowed))
                raise CheckpointError(
                    f"{source}: unsupported HART option {key}={llm_config[key]!r} (supported: {supported})"
                )
        names = {f.name for f in dataclasses.fields(cls)} - {"vocab_size", "latent_channels"}
        kwargs = {k: llm_config[k] for k in names if k in llm_config}
        return cls._checked(source, **kwargs, vocab_size=vocab_size, latent_channels=latent_channels)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch_nums"] = list(self.patch_nums)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "HART config") -> HartConfig:
        """Build from a saved config dict (:meth:`to_dict`); errors name ``source`` (the file)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CheckpointError(f"{source}: unknown HART config keys: {', '.join(sorted(unknown))}")
        return cls._checked(source, **data)

    @classmethod
    def _checked(cls, source: str, **kwargs: Any) -> HartConfig:
        """A config read from a checkpoint: a value the model cannot take is the checkpoint's problem."""
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc


def check_schedule(patch_nums: Sequence[int], config: HartConfig | None = None) -> tuple[int, ...]:
    """``patch_nums`` as a tuple of ints if HART can generate that schedule: side lengths increasing strictly
    from 1 (scale 0 is predicted from one position, the last context token or the class token) and, given the
    model's ``config``, no more scales than its level table has rows (a learned level embedding, as opposed
    to a timestep embedding, only knows the scales it was built for). An InputError names the problem."""
    patch_nums = validate_schedule(patch_nums)
    if patch_nums[0] != 1:
        raise InputError(f"HART's first scale must be 1x1 (one position predicts it), got patch_nums {patch_nums}")
    if config is not None and not config.use_timestep_embed and len(patch_nums) > len(config.patch_nums):
        raise InputError(
            f"the schedule {patch_nums} has {len(patch_nums)} scales but this model's level table has "
            f"{len(config.patch_nums)}"
        )
    return patch_nums


def hart_0p7b_1024() -> HartConfig:
    """The released ``hart-0.7b-1024px`` shape (C=1536, depth 16, Qwen2-1.5B context, 732.5M params).
    The head count is not pinned by the parameter count; the release's config.json decides it."""
    return HartConfig(
        embed_dim=1536,
        depth=16,
        num_heads=24,
        context_token=300,
        context_dim=1536,
        patch_nums=PATCH_NUMS[1024],
        use_timestep_embed=True,
    )


def hart_c2i(depth: int) -> HartConfig:
    """Class-conditional ImageNet-256 shapes (VAR convention: width 64*depth, depth heads)."""
    return HartConfig(
        embed_dim=64 * depth,
        depth=depth,
        num_heads=depth,
        num_classes=1000,
        patch_nums=PATCH_NUMS[256],
        use_timestep_embed=False,
    )


PRESETS = {
    "hart-0.7b-1024px": hart_0p7b_1024,
    "hart-d20": lambda: hart_c2i(20),
    "hart-d24": lambda: hart_c2i(24),
    "hart-d30": lambda: hart_c2i(30),
}


def scale_levels(lengths: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """Level id of every position for consecutive groups of the given lengths: [sum(lengths)] int64."""
    return torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(lengths)])


def block_causal_mask(levels: torch.Tensor) -> torch.Tensor:
    """[L, L] bool attention mask (True = may attend): a query sees keys of its own or earlier levels."""
    return levels[:, None] >= levels[None, :]


class HartAttention(nn.Module):
    """Multi-head self-attention with q/v biases (no k bias), RoPE and VAR's 0.25/sqrt(d) scale.
    [B, L, C] -> [B, L, C]; optional l2-normalised q/k with a learned per-head scale."""

    def __init__(self, dim: int, num_heads: int, l2_norm: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
        self.scale = 1.0 if l2_norm else 0.25 / math.sqrt(self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        # Called as a module (not F.linear on its weight) so that adapters wrapping it (LoRA) take part.
        qkv = (self.qkv_proj(x) + bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, d]
        if self.l2_norm:
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp_max(math.log(100.0)).exp()
            k = F.normalize(k, dim=-1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class HartBlock(nn.Module):
    """AdaLN Llama block. x [B, L, C], cond [B, 1, C] (pooled) -> [B, L, C].

    One RMSNorm (``ln_wo_grad``, with a weight) serves both branches; the modulation is split in the
    official order gamma1, gamma2, scale1, scale2, shift1, shift2.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, l2_norm: bool, index: int):
        super().__init__()
        self.index = index
        self.attn = HartAttention(dim, num_heads, l2_norm)
        self.ffn = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio))
        self.ln_wo_grad = RMSNorm(dim, eps)
        self.ada_lin = ada_linear(dim, dim, 6)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond).chunk(6, dim=-1)
        x = x + self.attn(modulate(self.ln_wo_grad(x), shift1, scale1), cos, sin, mask, cache, self.index) * gamma1
        return x + self.ffn(modulate(self.ln_wo_grad(x), shift2, scale2)) * gamma2


class HeadNorm(nn.Module):
    """AdaLN before the logits head: RMSNorm(x) * (1 + scale) + shift, modulation order (scale, shift).
    x [B, L, C], cond [B, 1, C] (the pooled condition) -> [B, L, C]."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.ln_wo_grad = RMSNorm(dim, eps)
        self.ada_lin = ada_linear(dim, dim, 2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).chunk(2, dim=-1)
        return modulate(self.ln_wo_grad(x), shift, scale)


class HartTransformer(nn.Module):
    """HART generator: next-scale transformer + residual diffusion head (``diffloss``).

    Inputs are in the tokenizer's latent space (``latent_channels`` = Cvae): teacher-forcing maps
    ``[B, sum_{s>=1} pn_s^2, Cvae]``; outputs are logits over the ``vocab_size`` codes.
    """

    def __init__(self, config: HartConfig):
        super().__init__()
        self.config = config
        C, cfg = config.embed_dim, config
        self.head_dim = C // cfg.num_heads
        self.word_embed = nn.Linear(cfg.latent_channels, C)
        if cfg.class_conditional:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # last row: the "no class" token for CFG
            self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        else:
            self.context_embed = nn.Linear(cfg.context_dim, C)
            self.context_norm = RMSNorm(cfg.context_dim, cfg.norm_eps) if cfg.use_context_norm else nn.Identity()
        if cfg.use_timestep_embed:
            self.lvl_embed = TimestepEmbedder(C)
        else:
            self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        self.blocks = nn.ModuleList(
            HartBlock(C, cfg.num_heads, cfg.mlp_ratio, cfg.norm_eps, cfg.attn_l2_norm, i) for i in range(cfg.depth)
        )
        self.head_nm = HeadNorm(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.decoder_norm = RMSNorm(C, cfg.norm_eps)
        self.diffloss = ResidualDiffusionHead(
            latent_channels=cfg.latent_channels,
            cond_dim=C,
            width=cfg.diff_width,
            depth=cfg.diff_depth,
            num_sampling_steps=cfg.num_sampling_steps,
        )

    @torch.no_grad()
    def init_weights(
        self,
        init_std: float | None = None,
        init_head: float = 0.02,
        init_adaln: float = 0.5,
        init_adaln_gamma: float = 1e-5,
    ) -> None:
        """Training-from-scratch init (VAR recipe): truncated-normal linears/embeddings with std
        sqrt(1/(3C)) by default, a small head, near-zero AdaLN gammas so every block starts close to the
        identity, attention output projections divided by sqrt(2 depth); MAR init for the diffusion head."""
        C = self.config.embed_dim
        std = init_std if init_std is not None else math.sqrt(1 / (3 * C))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        for attn in (b.attn for b in self.blocks):
            nn.init.zeros_(attn.q_bias)
            nn.init.zeros_(attn.v_bias)
        if self.config.class_conditional:
            nn.init.trunc_normal_(self.pos_start, std=std)
        self.head.weight.mul_(init_head)
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * len(self.blocks)))
            ada = block.ada_lin[-1].weight
            ada[2 * C :].mul_(init_adaln)
            ada[: 2 * C].mul_(init_adaln_gamma)
        self.diffloss.net.initialize_weights()

    # ----- conditioning -------------------------------------------------------------------------------
    def embed_condition(self, context: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Text: context [B, T, context_dim] -> [B, T, C]. Classes: labels [B] -> [B, C]."""
        if self.config.class_conditional:
            if labels is None:
                raise ValueError("class-conditional HART needs labels")
            return self.class_emb(labels)
        if context is None:
            raise ValueError("text-conditional HART needs a context tensor")
        return self.context_embed(self.context_norm(context.to(self.context_embed.weight.dtype)))

    def pooled_conditions(
        self, cond_BD: torch.Tensor, context_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AdaLN sources [B, 1, C] for the blocks (config pooling) and the head (always max).
        Padding takes part in max pooling, as in the official code (there is no padding mask)."""
        if cond_BD.dim() == 2:
            return cond_BD[:, None], cond_BD[:, None]
        max_pool = cond_BD.amax(dim=1, keepdim=True)
        if self.config.sep_aln_pooling_mode == "max":
            return max_pool, max_pool
        weights = context_mask.to(cond_BD.dtype)[..., None]
        avg = (cond_BD * weights / weights.sum(1, keepdim=True).clamp(min=1)).sum(1, keepdim=True)
        return avg, max_pool

    def prefix_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Input tokens of the prefix (level 0): [B, prefix_len, C]."""
        lvl0 = self.lvl_embed(torch.zeros(1, dtype=torch.long, device=cond_BD.device))
        if self.config.class_conditional:
            return cond_BD[:, None] + self.pos_start + lvl0
        return cond_BD + lvl0

    def scale_tokens(self, maps: torch.Tensor, si: int) -> torch.Tensor:
        """Input tokens of scale ``si`` >= 1 from latent maps [B, l, Cvae] -> [B, l, C]."""
        lvl = self.lvl_embed(torch.full((1,), si, dtype=torch.long, device=maps.device))
        return self.word_embed(maps.to(self.word_embed.weight.dtype)) + lvl

    # ----- positions ----------------------------------------------------------------------------------
    def prefix_rope(
        self, batch: int, position_ids: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.class_conditional:  # the class token sits at grid position (0, 0)
            return rope_2d(torch.zeros(batch, 1, 2, device=device), self.head_dim, self.config.rope_theta)
        return rope_1d(position_ids, self.head_dim, self.config.rope_theta)

    def image_positions(
        self, sizes: Sequence[int], final: int, offset: torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        """(row, col) of every token of maps of the given sizes on the ``final`` grid, [B, l, 2];
        ``offset`` [B] (the last context position) is added to both coordinates."""
        pos = grid_positions(sizes, final, device).expand(batch, -1, -1)
        if offset is not None:
            pos = pos + offset.to(device)[:, None, None]
        return pos

    def image_rope(
        self, sizes: Sequence[int], final: int, offset: torch.Tensor | None, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.image_positions(sizes, final, offset, batch, device)
        return rope_2d(positions, self.head_dim, self.config.rope_theta)

    def image_offset(self, position_ids: torch.Tensor | None) -> torch.Tensor | None:
        return None if self.config.class_conditional else position_ids[:, -1]

    # ----- transformer --------------------------------------------------------------------------------
    def run_blocks(
        self,
        x: torch.Tensor,
        cond_blocks: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """All blocks over tokens x [B, L, C] with AdaLN source cond_blocks [B, 1, C], RoPE tables cos/sin
        [B, L, head_dim] and an optional [L, L] bool mask (True: may attend; with ``cache``, the new tokens
        attend to everything cached and themselves) -> [B, L, C]."""
        cond_blocks = cond_blocks.to(x.dtype)
        for block in self.blocks:
            x = block(x, cond_blocks, cos, sin, mask, cache)
        return x

    def logits(self, h: torch.Tensor, cond_head: torch.Tensor) -> torch.Tensor:
        """Residual stream [B, l, C] -> fp32 logits [B, l, V]."""
        return self.head(self.head_nm(h, cond_head.to(h.dtype))).float()

    def diffusion_condition(self, h: torch.Tensor, code_vectors: torch.Tensor) -> torch.Tensor:
        """Condition of the residual diffusion head for last-scale tokens: RMSNorm(h + word_embed(e[idx]))
        with h the residual stream before the head norm. [B, l, C], [B, l, Cvae] -> [B, l, C]."""
        return self.decoder_norm(h + self.word_embed(code_vectors.to(h.dtype)))

    def forward(
        self,
        x_BLCv: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        keep_last: torch.Tensor | None = None,
        patch_nums: Sequence[int] | None = None,
        scales: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over all scales, or over the first ``scales`` of them.

        x_BLCv: [B, sum_{s>=1} pn_s^2, Cvae] inputs of scales 1..K-1 (``indices_to_ar_input``).
        patch_nums: the schedule of x_BLCv if not the config's (e.g. lower-resolution pre-training).
        keep_last: optional sorted [B, n] indices of the last-scale tokens to keep (token subsampling:
        the others are removed from the sequence, kept ones keep their 2-D positions).
        scales: run only the first ``scales`` scales (of x_BLCv, the inputs of scales 1..scales-1 are read).
        Positions stay those of the full schedule and the mask is block-causal, so the logits equal the
        first rows of a full pass, at a fraction of its cost (coarse-scale training).
        Returns logits [B, 1 + sum_{1<=s<K} pn_s^2 (or n on the last scale), V] (row j predicts the j-th
        target token) and the last-scale residual stream [B, pn_K^2 or n, C] before the head norm.
        """
        cfg = self.config
        B, device = x_BLCv.shape[0], x_BLCv.device
        full = tuple(patch_nums or cfg.patch_nums)
        if scales is not None and not 1 <= scales <= len(full):
            raise ValueError(f"scales must be between 1 and {len(full)}, got {scales}")
        pn = full if scales is None else full[:scales]
        if keep_last is not None and len(pn) < len(full):
            raise ValueError("keep_last subsamples the last scale, which a pass over fewer scales does not reach")
        cond_BD = self.embed_condition(context, labels)
        cond_blocks, cond_head = self.pooled_conditions(cond_BD, context_mask)

        lengths = [cfg.prefix_len] + [p * p for p in pn[1:]]
        img_pos = self.image_positions(pn[1:], full[-1], self.image_offset(context_position_ids), B, device)
        maps = x_BLCv[:, : sum(lengths[1:])]
        if keep_last is not None:
            n_last = pn[-1] ** 2
            gather = keep_last[..., None]
            last = x_BLCv[:, -n_last:].gather(1, gather.expand(-1, -1, x_BLCv.shape[-1]))
            maps = torch.cat((x_BLCv[:, :-n_last], last), dim=1)
            img_pos = torch.cat((img_pos[:, :-n_last], img_pos[:, -n_last:].gather(1, gather.expand(-1, -1, 2))), 1)
            lengths[-1] = keep_last.shape[1]
        levels = scale_levels(lengths, device)

        table = self.lvl_embed(torch.arange(len(pn), device=device))  # [K, C], one row per scale
        image = self.word_embed(maps.to(self.word_embed.weight.dtype)) + table[levels[cfg.prefix_len :]]
        x = torch.cat((self.prefix_tokens(cond_BD), image), dim=1)

        cos_p, sin_p = self.prefix_rope(B, context_position_ids, device)
        cos_i, sin_i = rope_2d(img_pos, self.head_dim, cfg.rope_theta)
        cos, sin = torch.cat((cos_p, cos_i), 1), torch.cat((sin_p, sin_i), 1)
        mask = block_causal_mask(levels)

        h = self.run_blocks(x, cond_blocks, cos, sin, mask)
        logits = self.logits(h[:, cfg.prefix_len - 1 :], cond_head)
        # the last scale's rows; with one scale that is the position that predicts its token
        return logits, h[:, -(lengths[-1] if len(pn) > 1 else 1) :]
