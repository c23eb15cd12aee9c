"""HART's hybrid tokenizer: a VQGAN-style autoencoder whose latent splits into multi-scale discrete
tokens plus a continuous residual.

``encode`` -> indices per scale + residual; ``indices_to_latent(indices) + residual`` is the encoder
latent again (to fp tolerance); ``decode`` maps any latent back to pixels. Images are float tensors
``[B, 3, H, W]`` in ``[-1, 1]``; PIL conversion lives in :mod:`arvision.imaging`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from arvision import checkpoint
from arvision.errors import CheckpointError, InputError
from arvision.nn.vqgan import Decoder, Encoder
from arvision.tokenizers.discriminator import DISCRIMINATOR_PREFIX
from arvision.tokenizers.multiscale_quantizer import MultiScaleQuantizer, QuantizerOutput
from arvision.tokenizers.schedules import PATCH_NUMS, schedule_for_latent, schedule_of, validate_schedule
from arvision.validation import check_flag, check_number

WEIGHT_PREFIX = "vae."


@dataclass
class HybridTokenizerConfig:
    """Hyper-parameters, named as in the official ``tokenizer/config.json``. Defaults: the released model."""

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    dropout: float = 0.0
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    v_patch_nums: tuple[int, ...] = PATCH_NUMS[1024]
    # Not in the official config: the official model hard-codes 32 GroupNorm groups.
    norm_groups: int = 32

    def __post_init__(self) -> None:
        # Checked here so that a value the model cannot take is named before torch fails on it, for configs
        # built in training (an InputError, which is a ValueError) and read from folders (from_dict).
        for name in ("vocab_size", "z_channels", "ch", "norm_groups"):
            check_number(getattr(self, name), name, whole=True, minimum=1)
        check_number(self.dropout, "dropout", minimum=0, below=1)
        check_number(self.beta, "beta", minimum=0)
        check_number(self.quant_resi, "quant_resi")
        check_number(self.share_quant_resi, "share_quant_resi", whole=True, minimum=1)
        check_number(self.quant_conv_ks, "quant_conv_ks", whole=True, minimum=1)
        if self.quant_conv_ks % 2 == 0:  # padding ks // 2 keeps the latent's size for odd kernels only
            raise InputError(f"quant_conv_ks must be odd, got {self.quant_conv_ks}")
        check_flag(self.using_znorm, "using_znorm")
        ch_mult = self.ch_mult
        if isinstance(ch_mult, str | bytes) or not isinstance(ch_mult, Sequence) or not ch_mult:
            raise InputError(f"ch_mult must be a non-empty list of whole numbers, got {ch_mult!r:.80}")
        for mult in ch_mult:
            check_number(mult, "each ch_mult entry", whole=True, minimum=1)
        self.ch_mult = tuple(ch_mult)
        # GroupNorm needs the group count to divide the channels of every norm (vqgan.group_norm takes
        # min(groups, channels) groups, so narrower layers are fine).
        for channels in sorted({self.ch * m for m in (1, *self.ch_mult)}):
            if channels % min(self.norm_groups, channels):
                raise InputError(
                    f"norm_groups {self.norm_groups} does not divide the {channels} channels of a "
                    f"layer (ch {self.ch} x ch_mult)"
                )
        self.v_patch_nums = validate_schedule(self.v_patch_nums, "v_patch_nums")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "tokenizer config") -> HybridTokenizerConfig:
        """Build from an official or saved config dict; options this port does not implement, and values the
        model cannot take, are CheckpointErrors naming ``source`` (the file)."""
        # option -> (is the value unsupported?, why)
        unsupported = {
            "double_decoder": (bool, "a second decoder is not implemented"),
            "disable_quant_resi": (bool, "the quantizer always refines codes with phi"),
            "quantizer_type": (
                lambda v: v != "var_hybrid",
                "only HART's hybrid tokenizer ('var_hybrid') is supported; VAR's discrete-only 'var' quantizer is not",
            ),
            "default_qresi_counts": (
                lambda v: v not in (0, None),
                "per-scale phi counts (share_quant_resi=0) are not implemented",
            ),
            "share_quant_resi": (
                lambda v: not isinstance(v, int) or v < 2,
                "only a bank of >= 2 shared phi convs is supported (the official 0: one phi per scale, and 1: "
                "a single phi, store their weights under other names)",
            ),
        }
        for key, (is_bad, why) in unsupported.items():
            if key in data and is_bad(data[key]):
                raise CheckpointError(f"{source}: option {key}={data[key]!r} is not supported: {why}")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except InputError as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Official ``HARTAutoEncoderWithDiscConfig`` layout (plus ``norm_groups``)."""
        data = dataclasses.asdict(self)
        data.update(ch_mult=list(self.ch_mult), v_patch_nums=list(self.v_patch_nums))
        return {
            "architectures": ["HARTAutoEncoderWithDisc"],
            "model_type": "hart_autoencoder_with_disc",
            "quantizer_type": "var_hybrid",
            "default_qresi_counts": 0,
            "double_decoder": False,
            "freeze_codebook_for_hybrid": True,
            **data,
        }


@dataclass
class TokenizerOutput:
    """``indices``: per-scale ``[B, pn*pn]`` int64; ``residual``: continuous residual ``[B, C, h, w]``
    (latent minus the discrete latent); ``latent``: encoder latent ``[B, C, h, w]``."""

    indices: list[torch.Tensor]
    residual: torch.Tensor
    latent: torch.Tensor
    patch_nums: tuple[int, ...] = field(default=())


class HybridTokenizer(nn.Module):
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> multi-scale tokens + continuous residual.

    H and W must be multiples of ``config.downsample`` (16 for the released model) and the latent grid
    square, with a scale schedule ending at its size (presets for 16/32/64 grids are built in).
    """

    def __init__(self, config: HybridTokenizerConfig):
        super().__init__()
        self.config = config
        c = config
        block_kwargs = dict(
            ch=c.ch, ch_mult=c.ch_mult, z_channels=c.z_channels, dropout=c.dropout, groups=c.norm_groups
        )
        self.encoder = Encoder(**block_kwargs)
        self.decoder = Decoder(**block_kwargs)
        pad = c.quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, c.quant_conv_ks, padding=pad)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, c.quant_conv_ks, padding=pad)
        self.quantize = MultiScaleQuantizer(
            c.vocab_size,
            c.z_channels,
            beta=c.beta,
            quant_resi=c.quant_resi,
            num_phi=c.share_quant_resi,
            num_tracked_scales=len(c.v_patch_nums),
            using_znorm=c.using_znorm,
        )

    # -- shapes -----------------------------------------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InputError(f"images must be floats in [-1, 1] (imaging.pil_to_tensor makes them), got {images.dtype}")
        h, w = images.shape[-2:]
        down = self.config.downsample
        if h % down or w % down:
            raise InputError(f"image size {h}x{w} is not a multiple of the tokenizer's downsampling ({down})")

    def patch_nums_for(self, latent: torch.Tensor, patch_nums: Sequence[int] | None = None) -> tuple[int, ...]:
        h, w = latent.shape[-2:]
        if h != w:
            raise InputError(f"multi-scale tokens need a square latent grid, got {h}x{w}")
        if patch_nums is not None:
            patch_nums = validate_schedule(patch_nums)
            if patch_nums[-1] != h:
                raise InputError(f"patch_nums ends at {patch_nums[-1]} but the latent grid is {h}x{w}")
            return patch_nums
        return schedule_for_latent(h, self.config.v_patch_nums)

    # -- encode / decode --------------------------------------------------------------------------------
    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> continuous encoder latent ``f`` ``[B, C, H/16, W/16]``."""
        self.check_images(images)
        return self.quant_conv(self.encoder(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, patch_nums: Sequence[int] | None = None) -> TokenizerOutput:
        """Tokenize images into discrete per-scale indices and the continuous residual."""
        latent = self.encode_latent(images)
        patch_nums = self.patch_nums_for(latent, patch_nums)
        indices, _ = self.quantize.latent_to_indices(latent, patch_nums)
        discrete = self.quantize.indices_to_latent(indices, patch_nums)
        return TokenizerOutput(indices=indices, residual=latent - discrete, latent=latent, patch_nums=patch_nums)

    def indices_to_latent(
        self,
        indices: Sequence[torch.Tensor],
        residual: torch.Tensor | None = None,
        patch_nums: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Assemble the latent ``[B, C, h, w]`` from per-scale indices, plus the residual if given."""
        if patch_nums is None:
            patch_nums = schedule_of(indices)
        patch_nums = validate_schedule(patch_nums)
        if len(indices) != len(patch_nums):
            raise InputError(f"got {len(indices)} index maps for {len(patch_nums)} scales")
        latent = self.quantize.indices_to_latent(indices, patch_nums)
        return latent if residual is None else latent + residual

    def decode(self, latent: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Latent ``[B, C, h, w]`` -> images ``[B, 3, d*h, d*w]`` (``d``: the downsampling, 16 in the release),
        clamped to [-1, 1] unless ``clamp=False``."""
        if latent.ndim != 4 or latent.shape[1] != self.config.z_channels:
            raise InputError(f"latent must be [B, {self.config.z_channels}, h, w], got {tuple(latent.shape)}")
        images = self.decoder(self.post_quant_conv(latent))
        return images.clamp(-1, 1) if clamp else images

    @torch.no_grad()
    def reconstruct(
        self,
        images: torch.Tensor,
        mode: Literal["hybrid", "discrete"] = "hybrid",
        patch_nums: Sequence[int] | None = None,
        scales: int | None = None,
    ) -> torch.Tensor:
        """Encode and decode: ``hybrid`` keeps the continuous residual, ``discrete`` drops it.
        ``scales`` (discrete only) decodes the codes of the first ``scales`` scales, to see what they carry."""
        if mode not in ("hybrid", "discrete"):
            raise InputError(f"mode must be 'hybrid' or 'discrete', got {mode!r}")
        if scales is not None and mode != "discrete":
            raise InputError("scales needs mode='discrete': the continuous residual completes all the scales")
        out = self.encode(images, patch_nums)
        if mode == "hybrid":
            return self.decode(out.latent)
        if scales is None:
            return self.decode(out.latent - out.residual)
        return self.decode_first_scales(out, scales)

    @torch.no_grad()
    def decode_first_scales(self, encoded: TokenizerOutput, scales: int) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` decoded from the codes of the first ``scales`` scales of an encoding."""
        schedule = encoded.patch_nums
        if not 1 <= scales <= len(schedule):
            raise InputError(f"scales must be between 1 and {len(schedule)} (schedule {schedule}), got {scales}")
        return self.decode(self.quantize.indices_to_latent(encoded.indices[:scales], schedule))

    def training_forward(
        self, images: torch.Tensor, continuous: bool, restart_below: float = 0.0
    ) -> tuple[torch.Tensor, QuantizerOutput]:
        """Decoder-training pass (reference hart.md 3.4): returns (raw reconstruction, quantizer output).

        ``continuous`` alternates HART's two decoder inputs: the full latent or its discrete part;
        ``restart_below`` is the quantizer's dead-code restart threshold (0: off, as in HART's recipe).
        """
        latent = self.encode_latent(images)
        quantized = self.quantize(
            latent, self.patch_nums_for(latent), continuous=continuous, restart_below=restart_below
        )
        return self.decode(quantized.latent, clamp=False), quantized

    # -- persistence ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> HybridTokenizer:
        """Load the official ``tokenizer/`` folder (``vae.``-prefixed keys, ``disc.`` ignored) or an unprefixed
        one; any other key is a CheckpointError naming it."""
        folder = Path(folder)
        config_file = folder / "config.json"
        if not config_file.is_file() and (folder / "tokenizer" / "config.json").is_file():
            # a HART pipeline or release folder: naming its tokenizer beats "missing config.json"
            raise CheckpointError(f"{folder} is a HART model folder: its tokenizer is {folder / 'tokenizer'}")
        config = HybridTokenizerConfig.from_dict(checkpoint.read_json(config_file), source=str(config_file))
        weights = checkpoint.find_weights_file(folder)
        state = checkpoint.load_state_dict(weights)
        prefix = WEIGHT_PREFIX if any(k.startswith(WEIGHT_PREFIX) for k in state) else ""
        state = {k: v for k, v in state.items() if not k.startswith(DISCRIMINATOR_PREFIX)}
        model = cls(config)
        # Check the keys as the file spells them (prefix included), so that messages name what is in the file.
        target = nn.ModuleDict({prefix.rstrip("."): model}) if prefix else model
        # The usage EMA is a training statistic whose shape follows the schedule it was trained with.
        ema = prefix + "quantize.ema_vocab_hit_SV"
        checkpoint.load_checked(target, state, source=str(weights), optional=lambda k: k == ema)
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(
        self, folder: str | os.PathLike, discriminator: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write ``config.json`` + ``model.safetensors`` in the official key layout (``vae.`` / ``disc.``), the two
        swapped in together (:func:`~arvision.checkpoint.replacing_folder`): a crash never leaves new weights
        beside the old config. Other entries of an existing folder are kept; its other weight files are not. A
        folder holding the current directory is refused (the swap renames it aside)."""
        state = {WEIGHT_PREFIX + k: v for k, v in self.state_dict().items()}
        state.update({DISCRIMINATOR_PREFIX + k: v for k, v in (discriminator or {}).items()})
        with checkpoint.replacing_folder(folder, ("config.json", *checkpoint.WEIGHT_FILE_NAMES)) as tmp:
            checkpoint.save_state_dict(state, tmp / "model.safetensors")
            checkpoint.write_json(tmp / "config.json", self.config.to_dict())
