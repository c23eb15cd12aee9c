"""VILA-U's depth transformer ("multi-token out"): predicts the D residual codes of one visual token.

For an LLM position with final normed hidden state ``h``, the input sequence over depth is
``[in_mlp_2(h), in_mlp_1(e_1), in_mlp_1(e_1 + e_2), ..., in_mlp_1(e_1 + ... + e_{D-1})] + pos_emb_d``,
where ``e_d`` are code embeddings of the vision tower. A small causal GPT stack runs over this length-D
sequence; one classifier shared by all depths reads out logits, output ``d`` predicting code ``d``.
Key names follow the release (``in_mlp_1``, ``head_transformer.blocks.*``, ``classifier_mlp.*``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from arvision.errors import InputError
from arvision.validation import check_number

# Per block: [] before the first step, then [keys, values] of shape [N, heads, positions, head_dim].
DepthCache = list[list[torch.Tensor]]


@dataclass
class DepthTransformerConfig:
    """The release's ``rqtransformer`` config; the defaults are vila-u-7b-256's.

    ``depth``: D, codes per visual token (sequence length over depth). ``code_dim``: the vision tower's
    code width C. ``llm_dim``: the LLM's hidden size H. ``embed_dim``, ``n_layer``, ``n_head``: the GPT stack.
    ``vocab_size``: codes per codebook. ``resid_dropout``: dropout after attention and MLP (training only).
    """

    depth: int = 4
    code_dim: int = 1024  # vision tower width C (in_mlp_1 input)
    llm_dim: int = 4096  # LLM hidden size (in_mlp_2 input)
    embed_dim: int = 2560
    n_layer: int = 6
    n_head: int = 40
    vocab_size: int = 16384
    resid_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("depth", "code_dim", "llm_dim", "embed_dim", "n_layer", "n_head", "vocab_size"):
            check_number(getattr(self, name), name, whole=True, minimum=1)
        check_number(self.resid_dropout, "resid_dropout", minimum=0, below=1)
        # the attention splits embed_dim into n_head heads; otherwise it fails only at the first generation
        if self.embed_dim % self.n_head:
            raise InputError(
                f"the depth transformer's embed_dim {self.embed_dim} is not divisible by n_head {self.n_head}"
            )


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with separate ``query``/``key``/``value`` linears. [B, T, E] -> [B, T, E]."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``cache`` (a list, filled in place with [keys, values]) lets new positions attend to earlier ones."""
        q, k, v = (rearrange(f(x), "b t (h d) -> b h t d", h=self.n_head) for f in (self.query, self.key, self.value))
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        past = k.shape[2] - q.shape[2]
        if past == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new queries are the last positions: causal among themselves, free to see every cached key
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=x.device).tril(past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.resid_drop(self.proj(rearrange(out, "b h t d -> b t (h d)")))


class Block(nn.Module):
    """Pre-LN GPT block: ``x + attn(ln1(x))`` then ``+ mlp(ln2(x))``. [B, T, E] -> [B, T, E]."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, cache: list[torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class _Stack(nn.Module):
    def __init__(self, config: DepthTransformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.n_head, config.resid_dropout) for _ in range(config.n_layer)
        )

    def forward(self, x: torch.Tensor, cache: DepthCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i])
        return x


class DepthTransformer(nn.Module):
    """hidden [B, T, llm_dim] + per-depth code embeddings [B, T, D, code_dim] -> logits [B, T, D, vocab].

    ``forward`` is the teacher-forced pass (training); ``step`` decodes one depth at a time with a
    key/value cache (sampling).
    """

    def __init__(self, config: DepthTransformerConfig):
        super().__init__()
        self.config = config
        self.in_mlp_1 = nn.Linear(config.code_dim, config.embed_dim)
        self.in_mlp_2 = nn.Linear(config.llm_dim, config.embed_dim)
        self.pos_emb_d = nn.Parameter(torch.randn(1, config.depth, config.embed_dim) * 0.02)
        self.head_transformer = _Stack(config)
        self.classifier_mlp = nn.Sequential(
            OrderedDict(
                [
                    ("layer_norm", nn.LayerNorm(config.embed_dim)),
                    ("linear", nn.Linear(config.embed_dim, config.vocab_size)),
                ]
            )
        )

    def _inputs(self, hidden: torch.Tensor, code_embeds: torch.Tensor) -> torch.Tensor:
        # Position 0 reads the LLM state; position d > 0 the running sum of the first d code embeddings.
        start = self.in_mlp_2(hidden).unsqueeze(-2)
        prefix = self.in_mlp_1(code_embeds.cumsum(dim=-2))
        seq = torch.cat([start, prefix], dim=-2)
        return seq + self.pos_emb_d[0, : seq.shape[-2]]

    def forward(self, hidden: torch.Tensor, code_embeds: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: hidden [..., llm_dim], code_embeds [..., D, code_dim] -> logits [..., D, vocab]."""
        seq = self._inputs(hidden, code_embeds[..., :-1, :])
        out = self.head_transformer(seq.reshape(-1, *seq.shape[-2:]))
        return self.classifier_mlp(out).reshape(*seq.shape[:-1], -1)

    def new_cache(self) -> DepthCache:
        """Per-block key/value cache for :meth:`step` (one sequence over depth per row)."""
        return [[] for _ in self.head_transformer.blocks]

    def step(self, hidden: torch.Tensor, code_sum: torch.Tensor | None, cache: DepthCache) -> torch.Tensor:
        """Incremental decoding over depth: logits [N, vocab] of the next code.

        The first call passes ``code_sum=None`` (the input is the LLM state ``hidden`` [N, llm_dim]); call
        ``d`` passes the sum of the first ``d`` code embeddings [N, code_dim]. Equals :meth:`forward`'s
        output ``d`` (the release recomputes the whole prefix instead; a cache gives the same logits).
        """
        d = cache[0][0].shape[2] if cache[0] else 0  # positions already cached
        x = self.in_mlp_2(hidden) if code_sum is None else self.in_mlp_1(code_sum)
        x = (x + self.pos_emb_d[0, d])[:, None]
        return self.classifier_mlp(self.head_transformer(x, cache))[:, -1]
