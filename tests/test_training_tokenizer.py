import pytest
import torch
from torch import nn

from arvision.checkpoint import load_checked, load_state_dict, select_prefix
from arvision.errors import InputError
from arvision.tokenizers.discriminator import PatchDiscriminator
from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig
from arvision.training.tokenizer import (
    PerceptualLoss,
    TokenizerLossConfig,
    TokenizerObjective,
    hinge_discriminator_loss,
    hinge_generator_loss,
    set_train_mode,
)


def make_tokenizer() -> HybridTokenizer:
    torch.manual_seed(0)
    config = HybridTokenizerConfig(vocab_size=32, z_channels=4, ch=8, ch_mult=(1, 2, 2), v_patch_nums=(1, 2, 4, 8))
    return HybridTokenizer(config)


def fixed_batch() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def optimised(
    tok: HybridTokenizer, config: TokenizerLossConfig, **parts
) -> tuple[TokenizerObjective, torch.optim.Optimizer]:
    """The objective in training mode and an AdamW over what learns (the shared loop's optimiser)."""
    objective = TokenizerObjective(tok, config, **parts)
    set_train_mode(tok, config.mode)
    params = [p for p in objective.parameters() if p.requires_grad]
    return objective, torch.optim.AdamW(params, lr=1e-3, betas=(0.5, 0.9), weight_decay=0.0)


def step(objective: TokenizerObjective, optimizer, images: torch.Tensor, continuous: bool = True) -> dict:
    total, terms = objective(images, continuous)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return terms


def random_features() -> nn.Module:
    torch.manual_seed(3)
    layers = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1)])

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            feats = []
            for layer in self.layers:
                x = torch.relu(layer(x))
                feats.append(x)
            return feats

    return Features()


@pytest.mark.parametrize("continuous", [True, False])
def test_decoder_step_lowers_loss_and_keeps_tokens_fixed(continuous):
    tok = make_tokenizer()
    images = fixed_batch()
    config = TokenizerLossConfig(mode="decoder", perceptual_weight=1.0)
    objective, optimizer = optimised(tok, config, perceptual=PerceptualLoss(random_features()))
    frozen_before = {k: v.clone() for k, v in tok.state_dict().items() if k.startswith(("encoder", "quant"))}
    tokens_before = tok.encode(images).indices
    with torch.no_grad():
        before = objective(images, continuous)[0].item()
    step(objective, optimizer, images, continuous)
    with torch.no_grad():
        after = objective(images, continuous)[0].item()
    assert after < before
    for key, value in frozen_before.items():
        assert torch.equal(tok.state_dict()[key], value), key
    assert all(torch.equal(a, b) for a, b in zip(tokens_before, tok.encode(images).indices))


def test_full_training_step_updates_codebook_and_tracks_usage():
    tok = make_tokenizer()
    images = fixed_batch()
    objective, optimizer = optimised(tok, TokenizerLossConfig(mode="full"))
    codebook = tok.quantize.embedding.weight.detach().clone()
    with torch.no_grad():
        before = objective(images, False)[0].item()
    step(objective, optimizer, images, continuous=False)
    with torch.no_grad():
        after = objective(images, False)[0].item()
    assert after < before
    assert not torch.equal(codebook, tok.quantize.embedding.weight)
    hits = tok.quantize.ema_vocab_hit_SV
    torch.testing.assert_close(hits.sum(dim=1), torch.tensor([4.0 * pn * pn for pn in (1, 2, 4, 8)]))
    assert 0 < tok.quantize.codebook_usage() <= 1


def test_gan_terms_train_the_discriminator():
    tok = make_tokenizer()
    disc = PatchDiscriminator(ndf=8, n_layers=2)
    objective, optimizer = optimised(tok, TokenizerLossConfig(gan_start=1), discriminator=disc)
    images = fixed_batch()
    first = step(objective, optimizer, images)
    assert "gan_d" in first and "gan_g" not in first  # the tokenizer feels the GAN from gan_start on
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    second = step(objective, optimizer, images)
    assert torch.isfinite(torch.stack([second["gan_d"], second["gan_g"]])).all()
    assert any(not torch.equal(before[k], v) for k, v in disc.state_dict().items())


def test_each_gan_term_moves_only_its_own_side():
    tok, disc = make_tokenizer(), PatchDiscriminator(ndf=8, n_layers=2)
    objective = TokenizerObjective(tok, TokenizerLossConfig(mode="full"), discriminator=disc)
    total, terms = objective(fixed_batch(), continuous=True)
    tok_params, disc_params = list(tok.parameters()), list(disc.parameters())

    def grads(loss, params):
        found = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(found, params)]

    assert all(torch.all(g == 0) for g in grads(terms["gan_g"], disc_params))
    assert all(torch.all(g == 0) for g in grads(terms["gan_d"], tok_params))
    assert any(torch.any(g != 0) for g in grads(terms["gan_g"], tok_params))
    for a, b in zip(grads(total, disc_params), grads(terms["gan_d"], disc_params)):
        torch.testing.assert_close(a, b)
    assert objective.batches_seen.item() == 1


def test_hinge_losses():
    assert hinge_discriminator_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0
    assert hinge_discriminator_loss(torch.zeros(2), torch.zeros(2)).item() == 1.0
    assert hinge_generator_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_a_perceptual_network_without_a_weight_is_refused():
    with pytest.raises(InputError, match="perceptual_weight 0"):
        TokenizerObjective(make_tokenizer(), TokenizerLossConfig(), perceptual=PerceptualLoss(random_features()))


def test_perceptual_loss_is_zero_only_for_identical_images():
    loss = PerceptualLoss(random_features())
    x = fixed_batch()
    assert loss(x, x).item() == 0.0
    assert loss(x, x.flip(-1)).item() > 0.0
    assert not any(p.requires_grad for p in loss.features.parameters())


def test_discriminator_loads_official_keys(hart_fixture_dir):
    state = select_prefix(load_state_dict(hart_fixture_dir / "tokenizer" / "model.safetensors"), "disc.")
    disc = PatchDiscriminator(ndf=8, n_layers=2)
    load_checked(disc, state, source="fixture")
    assert disc(fixed_batch()).shape == (4, 1, 6, 6)


def test_dead_codes_restart_onto_quantized_vectors():
    tok = make_tokenizer()
    quantize = tok.quantize
    with torch.no_grad():  # every code but the first is far away from any latent: a collapsed codebook
        quantize.embedding.weight[1:] = 1e3
        quantize.embedding.weight[0] = 0.0
    tok.train()
    latent = tok.encode_latent(fixed_batch())
    patch_nums = tok.patch_nums_for(latent)
    quantize(latent, patch_nums, continuous=False)
    assert torch.all(quantize.embedding.weight[1:] == 1e3)  # restarts are off by default
    quantize.ema_vocab_hit_SV.zero_()
    rests: list = []
    quantize._residual_quantize(latent.detach(), patch_nums, phi_on_last=True, rests=rests)
    candidates = torch.cat(rests)
    quantize(latent, patch_nums, continuous=False, restart_below=0.5)
    moved = quantize.embedding.weight[1:]
    assert not torch.any(moved == 1e3)
    # each restarted code is one of the vectors that were quantized in this batch
    distance = (moved[:, None] - candidates[None]).norm(dim=-1).min(dim=1).values
    assert distance.max() < 1e-5
    # restarted codes get a grace share of the usage statistics, so they are not restarted again at once
    hits = quantize.ema_vocab_hit_SV
    torch.testing.assert_close(hits[:, 1:], (hits[:, :1] / 32).expand(-1, 31))  # code 0 took every hit
    used = len(torch.cat([i.flatten() for i in tok.encode(fixed_batch()).indices]).unique())
    assert used > 1


def test_restarts_apply_in_full_mode_only():
    frozen = make_tokenizer()
    with torch.no_grad():
        frozen.quantize.embedding.weight[1:] = 1e3
    objective, optimizer = optimised(frozen, TokenizerLossConfig(mode="decoder", restart_dead_codes=0.5))
    step(objective, optimizer, fixed_batch(), continuous=False)
    step(objective, optimizer, fixed_batch(), continuous=False)
    assert torch.all(frozen.quantize.embedding.weight[1:] == 1e3)
