"""VILA-U: one LLaMA for visual understanding and generation over residual-VQ vision tokens.

Understanding: image -> codes -> Σ_d e_d -> ``mm_projector`` -> spliced into the prompt at ``<image>``.
Generation: at each visual position the LLM's final normed hidden state conditions the depth
transformer, which samples the D codes of the *next* visual token (CFG on its logits at every depth);
their summed embedding, projected, is the LLM's next input. The LLM is a plain transformers
``LlamaForCausalLM`` driven by an explicit loop with its KV cache.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from arvision.models.depth_transformer import DepthTransformer, DepthTransformerConfig
from arvision.nn.sampling import Generators, check_generators, guide, sample_logits
from arvision.text.vicuna import IMAGE_TOKEN_INDEX
from arvision.tokenizers.rq_vision_tower import RQVisionTower, RQVisionTowerConfig

# The release's sampling constants for visual codes (hard-coded there, arguments here).
CODE_TEMPERATURE, CODE_TOP_K, CODE_TOP_P, DEFAULT_CFG = 1.0, 900, 0.96, 3.0


@dataclass
class VilaUConfig:
    """``llm`` holds ``LlamaConfig`` keyword arguments (``rope_scaling`` included, kept as given).

    ``siglip_name`` is the release's ``rqvaesiglip.pretrained_model``: the hub id whose config the official
    code fetches to build SigLIP. It is kept so that a saved folder still loads there (empty when unknown).
    """

    llm: dict[str, Any]
    tower: RQVisionTowerConfig
    depth: DepthTransformerConfig = field(default_factory=DepthTransformerConfig)
    num_video_frames: int = 8  # frames sampled for video understanding
    video_generation_frames: int = 8
    siglip_name: str = ""

    @property
    def vocab_size(self) -> int:
        return int(self.llm["vocab_size"])


@dataclass(frozen=True)
class SpecialTokens:
    """The four tokens added last to the vocabulary, in this order (ids V-4 ... V-1)."""

    im_start: int
    im_end: int
    vi_start: int
    vi_end: int

    @classmethod
    def for_vocab(cls, vocab_size: int) -> SpecialTokens:
        return cls(vocab_size - 4, vocab_size - 3, vocab_size - 2, vocab_size - 1)


class MultimodalProjector(nn.Module):
    """``mlp2x_gelu``: Linear(C, H) -> GELU (erf) -> Linear(H, H). [..., C] -> [..., H]."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @torch.no_grad()
    def fold_input_transform(self, mean: torch.Tensor, transform: torch.Tensor) -> None:
        """Fold ``transform @ (x - mean)`` (``mean`` [C], ``transform`` [C, C], e.g. a per-channel
        standardisation or a whitening) into the first layer, so that it reads transformed features while the
        projector stays an ``mlp2x_gelu`` (same keys, same shapes)."""
        first = self.layers[0]
        channels = first.in_features
        if mean.shape != (channels,) or transform.shape != (channels, channels):
            raise ValueError(
                f"mean and transform must have shapes ({channels},) and ({channels}, {channels}), "
                f"got {tuple(mean.shape)} and {tuple(transform.shape)}"
            )
        folded = first.weight @ transform.to(first.weight)
        first.bias.sub_(folded @ mean.to(first.weight))
        first.weight.copy_(folded)


@dataclass
class CodeGeneration:
    """``codes``: [n, T, D]. With a trace: ``hidden`` [T, 2n, H] (the LLM state handed to the depth
    transformer at each step) and ``logits`` [T, D, n, vocab] (guided depth logits)."""

    codes: torch.Tensor
    hidden: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Left padding: positions count real tokens only; padded slots get 1 (as HF prepares them)."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode for the block, then give every submodule back its own train/eval flag.

    The release calls ``.eval()`` and leaves it so; restoring the flags keeps a training run that samples
    images along the way (with the depth transformer training) in training mode afterwards.
    """
    flags = [(sub, sub.training) for module in modules for sub in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for sub, training in flags:
            sub.training = training


def _no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' switch that turns weight initialisation (torch.nn.init and ``init_weights``) into no-ops."""
    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # transformers 4.x
    return no_init_weights()


class VilaU(nn.Module):
    """The LLM, the vision tower, the ``mm_projector`` and the depth transformer, wired together.

    Understanding: :meth:`encode_images` (pixels [B, 3, R, R] -> codes [B, g*g, D], features [B, g*g, H]),
    :meth:`splice` (prompt ids with ``<image>`` placeholders -> embeddings [S, H]) and
    :meth:`generate_text_batch` (embeddings [B, S, H] -> new token ids per row).
    Generation: :meth:`generate_codes` (prompt ids [2n, S] -> codes [n, T, D]) and :meth:`decode_codes`
    (codes [n, g*g, D] -> pixels [n, 3, R, R]). g = R // patch, D = residual depth, H = LLM width.
    The inference methods run the vision tower and the depth transformer in eval mode whatever the
    caller's mode, as the release forces it (no dropout while sampling, no codebook EMA update).
    """

    def __init__(self, config: VilaUConfig):
        super().__init__()
        self.config = config
        self.llm = LlamaForCausalLM(LlamaConfig(**config.llm))
        self.vision_tower = RQVisionTower(config.tower)
        self.mm_projector = MultimodalProjector(config.tower.dim, self.llm.config.hidden_size)
        self.depth_transformer = DepthTransformer(config.depth)

    @classmethod
    def empty(cls, config: VilaUConfig) -> VilaU:
        """A model whose initialised weights are left as ``torch.empty`` memory, to load a checkpoint over:
        random initialisation costs about two minutes for the 7B. Buffers computed at construction (RoPE
        frequencies, position ids, codebook EMA statistics) are made as usual. Load every weight before use."""
        with _no_init_weights():
            model = cls(config)
        model.llm.tie_weights()  # skipped together with the initialisation; a no-op for untied embeddings
        return model

    # ----- vision tokens into the LLM -----

    def project_codes(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Codes [..., D] -> LLM input embeddings [..., H]: the projected sum of the code embeddings
        (``check=False``: codes valid by construction, no validation and no device sync)."""
        return self.mm_projector(self.vision_tower.codes_to_latent(codes, check))

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B, 3, R, R] -> (codes [B, g*g, D], features [B, g*g, H]) in raster order."""
        # Eval whatever the caller's mode, as the release's encode_images does: in training mode the
        # quantizer would move its codebooks by EMA toward the images being described.
        with eval_mode(self.vision_tower):
            codes, z_q = self.vision_tower.encode(pixels)
        return codes.flatten(1, 2), self.mm_projector(z_q.flatten(1, 2))

    def splice(self, input_ids: Sequence[int] | torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Text ids with ``IMAGE_TOKEN_INDEX`` placeholders -> embeddings [S', H]; the i-th placeholder is
        replaced by the ``g*g`` rows of ``image_features[i]`` ([N, g*g, H])."""
        ids = torch.as_tensor(input_ids, device=image_features.device)
        slots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if len(slots) != len(image_features):
            raise ValueError(f"{len(slots)} <image> placeholder(s) for {len(image_features)} image(s)")
        embed = self.llm.get_input_embeddings()
        pieces, start = [], 0
        for slot, features in zip(slots, image_features, strict=True):
            pieces += [embed(ids[start:slot]), features]
            start = slot + 1
        pieces.append(embed(ids[start:]))
        return torch.cat(pieces, dim=0)

    # ----- the LLM -----

    def llm_hidden(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        """Final RMS-normed hidden states [B, S, H] (``cache``, when given, is extended in place)."""
        # The cache goes in positionally: transformers 5 renamed ``past_key_values`` to ``cache``.
        out = self.llm.model(
            None, attention_mask, position_ids, cache, inputs_embeds=inputs_embeds, use_cache=cache is not None
        )
        return out.last_hidden_state

    @torch.no_grad()
    def generate_text_batch(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 512,
        max_length: int | None = None,
        eos_token_id: int | None = 2,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        generator: Generators = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Decode B prompts at once: embeddings [B, S, H], left padded where ``attention_mask`` [B, S] is 0.

        Returns per row the new token ids [N_b] (up to and including its first EOS) and their next-token
        logits [N_b, vocab]. A row ends at its first EOS, after ``max_new_tokens``, or once its prompt and
        answer fill ``max_length`` positions (the LLM's context; as transformers' ``max_length``, a prompt
        that already fills it still gets one token). Decoding stops when every row has ended. A list of
        generators, one per row, makes each row's answer the one it would get alone.
        """
        batch, length = inputs_embeds.shape[:2]
        check_generators(generator, batch)
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=inputs_embeds.device)
        mask = attention_mask.long()
        # Each row's answer length: max_new_tokens, or what its own prompt leaves of max_length.
        ends = torch.full((batch,), max_new_tokens, dtype=torch.long, device=inputs_embeds.device)
        if max_length is not None:
            ends = ends.clamp(max=(max_length - mask.sum(-1)).clamp(min=1))
        cache = DynamicCache()
        hidden = self.llm_hidden(inputs_embeds, mask, positions_from_mask(mask), cache)[:, -1]
        tokens, all_logits = [], []
        for step in range(int(ends.max())):
            logits = self.llm.lm_head(hidden).float()
            token = sample_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            tokens.append(token)
            all_logits.append(logits)
            if eos_token_id is not None:
                ends = torch.where((token == eos_token_id) & (ends > step), step + 1, ends)
            if bool((ends <= step + 1).all()):
                break
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
            embeds = self.llm.get_input_embeddings()(token[:, None])
            hidden = self.llm_hidden(embeds, mask, mask.sum(-1, keepdim=True) - 1, cache)[:, -1]
        if not tokens:
            empty = torch.zeros(0, dtype=torch.long, device=inputs_embeds.device)
            return [empty] * batch, [torch.zeros(0, self.llm.lm_head.out_features, device=empty.device)] * batch
        ids, logits = torch.stack(tokens, dim=1), torch.stack(all_logits, dim=1)  # [B, N], [B, N, vocab]
        lengths = ends.tolist()
        return [ids[b, :n] for b, n in enumerate(lengths)], [logits[b, :n] for b, n in enumerate(lengths)]

    # ----- visual codes out of the LLM -----

    def sample_codes(
        self,
        hidden: torch.Tensor,
        *,
        cfg: float = DEFAULT_CFG,
        temperature: float = CODE_TEMPERATURE,
        top_k: int = CODE_TOP_K,
        top_p: float = CODE_TOP_P,
        generator: Generators = None,
        forced: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample the D codes of one visual token for ``n`` images from hidden [2n, H] = [cond; uncond].

        At each depth the logits of both halves are combined with classifier-free guidance and one code
        is drawn per image, then written to both halves. ``forced`` ([n, D]) replays given codes instead.
        Returns (codes [n, D], guided logits [D, n, vocab]).
        """
        n = hidden.shape[0] // 2
        codes = torch.zeros(n, self.config.depth.depth, dtype=torch.long, device=hidden.device)
        cache = self.depth_transformer.new_cache()
        code_sum, guided_all = None, []
        # Eval whatever the caller's mode, as the release's generation does: no dropout while sampling.
        with eval_mode(self.depth_transformer):
            for d in range(self.config.depth.depth):
                logits = self.depth_transformer.step(hidden, code_sum, cache).float()
                guided = guide(logits[:n], logits[n:], cfg)
                guided_all.append(guided)
                if forced is None:
                    code = sample_logits(guided, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
                else:
                    code = forced[:, d]
                codes[:, d] = code
                embed = self.vision_tower.quantizer.codebook(d).embed(code.repeat(2)).to(hidden.dtype)
                code_sum = embed if code_sum is None else code_sum + embed
        return codes, torch.stack(guided_all)

    @torch.no_grad()
    def generate_codes(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        num_tokens: int,
        *,
        cfg: float = DEFAULT_CFG,
        temperature: float = CODE_TEMPERATURE,
        top_k: int = CODE_TOP_K,
        top_p: float = CODE_TOP_P,
        generator: Generators = None,
        forced_codes: torch.Tensor | None = None,
        trace: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> CodeGeneration:
        """Generate ``num_tokens`` visual tokens after left-padded prompts ``input_ids`` [2n, S]
        (rows: n conditional, then n unconditional; each ends with ``<im_start>`` or ``<vi_start>``).

        ``forced_codes`` [n, T, D] replays recorded codes (teacher forcing) instead of sampling;
        ``trace`` keeps the per-step states and logits; ``on_step(t)`` is called after each token. A list of
        generators, one per image, draws each image's codes from its own.
        """
        check_generators(generator, input_ids.shape[0] // 2)
        if forced_codes is not None:  # checked once here: the loop below projects its codes unchecked
            self.vision_tower.quantizer.check_codes(forced_codes)
        cache = DynamicCache()
        mask = attention_mask.long()
        embeds = self.llm.get_input_embeddings()(input_ids)
        hidden = self.llm_hidden(embeds, mask, positions_from_mask(mask), cache)[:, -1]
        codes, hiddens, logits = [], [], []
        for t in range(num_tokens):
            forced = None if forced_codes is None else forced_codes[:, t]
            step_codes, step_logits = self.sample_codes(
                hidden, cfg=cfg, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, forced=forced
            )
            codes.append(step_codes)
            if trace:
                hiddens.append(hidden)
                logits.append(step_logits)
            if on_step is not None:
                on_step(t)
            if t == num_tokens - 1:
                break
            # The next input is the projected sum of the codes just drawn (the same for both halves).
            step = self.project_codes(step_codes, check=False).repeat(2, 1)[:, None].to(embeds.dtype)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            position = mask.sum(-1, keepdim=True) - 1
            hidden = self.llm_hidden(step, mask, position, cache)[:, -1]
        out = CodeGeneration(codes=torch.stack(codes, dim=1))
        if trace:
            out.hidden, out.logits = torch.stack(hiddens), torch.stack(logits)
        return out

    def visual_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Uncached recomputation of the states that condition the depth transformer.

        Prompts [B, S] (left padded) followed by the visual tokens ``codes`` [B, T, D] -> [B, T, H]:
        the state at the last prompt position and at the first T-1 visual positions.
        """
        steps = codes.shape[1]
        embeds = self.llm.get_input_embeddings()(input_ids)
        visual = self.project_codes(codes[:, : steps - 1]).to(embeds.dtype)
        mask = torch.cat([attention_mask.long(), attention_mask.new_ones(codes.shape[0], steps - 1).long()], dim=1)
        hidden = self.llm_hidden(torch.cat([embeds, visual], dim=1), mask, positions_from_mask(mask))
        return hidden[:, input_ids.shape[1] - 1 :]

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Visual tokens [n, T, D] (T = g*g, raster order) -> pixels [n, 3, R, R] in about [-1, 1]."""
        side = math.isqrt(codes.shape[1])
        with eval_mode(self.vision_tower):  # as encode_images: no decoder dropout at inference
            return self.vision_tower.decode_codes(codes.reshape(codes.shape[0], side, side, -1))
