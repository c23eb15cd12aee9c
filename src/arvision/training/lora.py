"""Low-rank adapters (LoRA) for fine-tuning, through peft: the model's weights stay frozen and a rank-``r``
update ``B @ A * alpha / r`` on chosen linear layers learns instead, a small fraction of the parameters
(and of the optimizer state). For export the updates are merged into the weights, so the folder has the
plain layout and loads with ``from_pretrained`` like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from arvision.errors import InputError


@dataclass
class LoraSettings:
    """``model.lora`` of the tasks that can fine-tune through adapters."""

    rank: int = 0  # 0: no adapters, full fine-tuning
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0
    targets: str | None = None  # regular expression over module names (full match); None: the task's default

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise InputError(
                f"model.lora needs rank >= 0 (0: no adapters), alpha > 0 and dropout in [0, 1), got {self}"
            )


def add_lora(model: nn.Module, settings: LoraSettings, default_targets: str) -> nn.Module:
    """Wrap the linear layers of ``model`` whose names match ``settings.targets`` (else ``default_targets``)
    with adapters, in place, unless it has them already; afterwards only the adapters of ``model`` require
    gradients. Returns ``model``."""
    try:
        import peft
        from peft.tuners.lora import LoraLayer
    except ModuleNotFoundError as exc:
        raise InputError("LoRA (model.lora.rank > 0) needs peft: pip install 'arvision[train]'") from exc
    if settings.rank < 1:
        raise InputError(f"add_lora needs model.lora.rank >= 1, got {settings.rank}")
    targets = settings.targets or default_targets
    if not any(isinstance(module, LoraLayer) for module in model.modules()):
        config = peft.LoraConfig(
            r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets
        )
        try:
            peft.inject_adapter_in_model(config, model)
        except ValueError as exc:  # peft's message when nothing matches
            raise InputError(f"model.lora.targets {targets!r} matches no linear layer: {exc}") from exc
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weight (peft's ``merge``) and put the plain layer back in its
    place, in place: ``model`` then has the layout and state-dict keys it had before :func:`add_lora`.
    Returns ``model``."""
    from peft.tuners.lora import LoraLayer

    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name in adapted:
        layer = model.get_submodule(name)
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):  # peft's record of the adapters it added
        del model.peft_config
    return model
