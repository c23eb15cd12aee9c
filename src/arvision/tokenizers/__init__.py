"""Image tokenizers: HART's hybrid multi-scale tokenizer."""

from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig, TokenizerOutput
from arvision.tokenizers.multiscale_quantizer import MultiScaleQuantizer
from arvision.tokenizers.schedules import PATCH_NUMS, schedule_for_latent

__all__ = [
    "PATCH_NUMS",
    "HybridTokenizer",
    "HybridTokenizerConfig",
    "MultiScaleQuantizer",
    "TokenizerOutput",
    "schedule_for_latent",
]
