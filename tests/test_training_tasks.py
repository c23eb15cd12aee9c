import pytest
import torch

from arvision.errors import InputError
from arvision.training.tasks import build_task


@pytest.mark.parametrize("source", ["photos", "world"])
def test_tokenizer_task_data_sources_give_image_batches(source):
    task = build_task("tokenizer", {}, {"source": source, "resolution": 32, "length": 4})
    dataset = task.build_dataset()
    batch = task.collate([dataset[0], dataset[1]])
    assert batch.shape == (2, 3, 32, 32) and batch.min() >= -1 and batch.max() <= 1
    assert torch.equal(task.collate([dataset[0]]), task.collate([dataset[0]]))


def test_unknown_task_and_keys_are_named():
    with pytest.raises(InputError, match="unknown training task 'gan'"):
        build_task("gan", {}, {})
    with pytest.raises(InputError, match="model.tokenizer.chh"):
        build_task("tokenizer", {"tokenizer": {"chh": 3}}, {})


@pytest.mark.parametrize(
    ("model", "data", "seed", "message"),
    [
        ({}, {"source": "world", "resolution": 32}, -1, r"seed must be within \[0, 2\*\*62\), got -1"),
        ({}, {"source": "world", "resolution": 32}, 2**64 - 1, r"seed must be within \[0, 2\*\*62\), got 1844"),
        ({}, {"resolution": 0}, 0, "data.resolution must be > 0, got 0"),
        ({}, {"length": 0}, 0, "data.length must be > 0, got 0"),
        ({}, {"resolution": 40}, 0, "data.resolution 40 is not a multiple of the tokenizer's downsampling 16"),
        ({"loss": {"perceptual_weight": 1.0}}, {}, 0, "model.loss.perceptual_weight: .* no perceptual network"),
        ({"loss": {"continuous_prob": 2}}, {}, 0, r"model.loss.continuous_prob must be within \[0, 1\], got 2"),
        ({"loss": {"gan_weight": -1}}, {}, 0, "model.loss.gan_weight must be a finite number >= 0, got -1"),
        ({}, {"length": 10**9}, 0, "data.length must be at most 100,000,000"),
    ],
)
def test_tokenizer_task_names_out_of_range_settings(model, data, seed, message):
    with pytest.raises(InputError, match=message):
        build_task("tokenizer", model, data, seed=seed)


def test_tokenizer_task_names_a_missing_init_from_before_training(tmp_path):
    from arvision.errors import CheckpointError

    with pytest.raises(CheckpointError, match="missing file: .*config.json"):
        build_task("tokenizer", {"init_from": str(tmp_path / "nowhere")}, {})


def test_tokenizer_fine_tune_with_a_gan_starts_from_and_exports_the_discriminator(tmp_path):
    import json

    from safetensors.torch import load_file

    from arvision.tokenizers.discriminator import PatchDiscriminator
    from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig
    from arvision.training.loop import OptimConfig, TrainConfig, Trainer

    torch.manual_seed(0)
    config = HybridTokenizerConfig(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 2), v_patch_nums=(1, 2, 4, 8))
    start, disc = HybridTokenizer(config), PatchDiscriminator(ndf=8, n_layers=2)
    start.save_pretrained(tmp_path / "start", discriminator=disc.state_dict())
    model = {
        "init_from": str(tmp_path / "start"),
        "discriminator": {"ndf": 8, "n_layers": 2},
        "loss": {"mode": "decoder", "gan_start": 2},
    }
    task = build_task("tokenizer", model, {"source": "photos", "resolution": 16, "length": 16})
    built = task.build_model()
    assert all(torch.equal(built.discriminator.state_dict()[k], v) for k, v in disc.state_dict().items())
    groups = task.clip_groups(built)  # clipped apart: the two networks' gradients never share a norm
    assert list(groups) == ["tokenizer", "discriminator"]
    assert {id(p) for p in groups["discriminator"]} == {id(p) for p in built.discriminator.parameters()}
    assert sum(len(g) for g in groups.values()) == sum(p.requires_grad for p in built.parameters())

    train = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=3, batch_size=2, log_every=1, progress=False)
    train.optim = OptimConfig(lr=1e-2)
    final = Trainer(train, task).run()
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # The discriminator learns from the first batch; its term on the tokenizer starts at gan_start.
    assert ["gan_g" in r for r in logs] == [False, False, True] and all("gan_d" in r for r in logs)
    assert all(r["grad_norm"] > 0 and r["grad_norm_discriminator"] > 0 for r in logs)
    tuned = HybridTokenizer.from_pretrained(final)
    assert tuned.config == config
    assert torch.equal(tuned.encoder.conv_in.weight, start.encoder.conv_in.weight)  # decoder-only recipe
    assert not torch.equal(tuned.decoder.conv_out.weight, start.decoder.conv_out.weight)
    saved = load_file(str(final / "model.safetensors"))
    weights = [k for k, v in disc.state_dict().items() if v.is_floating_point()]
    assert any(not torch.equal(saved[f"disc.{k}"], disc.state_dict()[k]) for k in weights)  # it trained


def test_tokenizer_discriminator_of_the_wrong_shape_is_named(tmp_path):
    from arvision.errors import CheckpointError
    from arvision.tokenizers.discriminator import PatchDiscriminator
    from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig

    config = HybridTokenizerConfig(vocab_size=16, z_channels=4, ch=8, ch_mult=(1, 2), v_patch_nums=(1, 2, 4, 8))
    HybridTokenizer(config).save_pretrained(tmp_path, discriminator=PatchDiscriminator(ndf=8, n_layers=2).state_dict())
    task = build_task("tokenizer", {"init_from": str(tmp_path), "discriminator": {"ndf": 16, "n_layers": 2}}, {})
    with pytest.raises(CheckpointError, match=r"disc\."):
        task.build_model()
