import json
import re

import pytest
import torch

from arvision import checkpoint
from arvision.defaults import default_model_path
from arvision.errors import CheckpointError, InputError
from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig
from arvision.tokenizers.schedules import PATCH_NUMS

FIXTURE_PATCH_NUMS = (1, 2, 3, 4, 6, 8)
ATOL = 1e-4


def tiny_config(**overrides) -> HybridTokenizerConfig:
    kwargs = dict(vocab_size=64, z_channels=4, ch=8, ch_mult=(1, 1, 2, 2, 4), v_patch_nums=PATCH_NUMS[256])
    kwargs.update(overrides)
    return HybridTokenizerConfig(**kwargs)


@pytest.fixture(scope="module")
def official(hart_fixture_dir) -> HybridTokenizer:
    return HybridTokenizer.from_pretrained(hart_fixture_dir / "tokenizer")


# -- parity with the official code (tensors recorded in tests/fixtures/hart-tiny-a) -----------------------


def test_encoder_and_latent_match_official(official, hart_cases):
    images = hart_cases["tok_images"]
    with torch.no_grad():
        torch.testing.assert_close(official.encoder(images), hart_cases["tok_enc_out"], atol=ATOL, rtol=0)
        torch.testing.assert_close(official.encode_latent(images), hart_cases["tok_f"], atol=ATOL, rtol=0)


def test_indices_and_ar_residual_match_official(official, hart_cases):
    out = official.encode(hart_cases["tok_images"], FIXTURE_PATCH_NUMS)
    for si, idx in enumerate(out.indices):
        assert torch.equal(idx, hart_cases[f"tok_idx_s{si}"]), f"scale {si}"
    _, r_pre = official.quantize.latent_to_indices(hart_cases["tok_f"], FIXTURE_PATCH_NUMS)
    torch.testing.assert_close(r_pre.flatten(2).transpose(1, 2), hart_cases["tok_r_pre"], atol=ATOL, rtol=0)


def test_three_quantizer_paths_match_official(official, hart_cases):
    indices = [hart_cases[f"tok_idx_s{si}"] for si in range(len(FIXTURE_PATCH_NUMS))]
    q = official.quantize
    with torch.no_grad():
        fhats = q.latent_to_fhats(hart_cases["tok_f"], FIXTURE_PATCH_NUMS)
        for si, fhat in enumerate(fhats):
            torch.testing.assert_close(fhat, hart_cases[f"tok_fhat_var_s{si}"], atol=ATOL, rtol=0)
        discrete = q.indices_to_latent(indices, FIXTURE_PATCH_NUMS)
        torch.testing.assert_close(discrete, hart_cases["tok_fhat_discrete"], atol=ATOL, rtol=0)
        ar_input = q.indices_to_ar_input(indices, FIXTURE_PATCH_NUMS)
        torch.testing.assert_close(ar_input, hart_cases["tok_var_input"], atol=ATOL, rtol=0)


def test_decoder_matches_official(official, hart_cases):
    with torch.no_grad():
        for latent, key in [
            (hart_cases["tok_fhat_discrete"], "tok_dec_discrete"),
            (hart_cases["tok_fhat_var_s5"], "tok_dec_discrete_var"),
            (hart_cases["tok_f"], "tok_dec_continuous"),
        ]:
            torch.testing.assert_close(official.decode(latent, clamp=False), hart_cases[key], atol=ATOL, rtol=0)
        clamped = official.decode(hart_cases["tok_f"])
        assert clamped.min() >= -1 and clamped.max() <= 1


def test_phi_index_matches_official_fixture(official, hart_cases):
    got = [official.quantize.phi_index(si, len(FIXTURE_PATCH_NUMS)) for si in range(len(FIXTURE_PATCH_NUMS))]
    assert got == hart_cases["tok_phi_index"].tolist()


def test_phi_index_tables_of_reference():
    q = HybridTokenizer(tiny_config()).quantize
    assert [q.phi_index(si, 10) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [q.phi_index(si, 14) for si in range(14)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]


# -- shapes and invariants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [256, 512, 1024])
def test_shapes_for_each_preset_schedule(resolution):
    torch.manual_seed(0)
    tok = HybridTokenizer(tiny_config()).eval()
    images = torch.rand(1, 3, resolution, resolution) * 2 - 1
    out = tok.encode(images)
    grid = resolution // 16
    assert out.patch_nums == PATCH_NUMS[resolution]
    assert [tuple(i.shape) for i in out.indices] == [(1, pn * pn) for pn in PATCH_NUMS[resolution]]
    assert out.latent.shape == out.residual.shape == (1, 4, grid, grid)
    assert all(int(i.max()) < 64 and int(i.min()) >= 0 for i in out.indices)
    with torch.no_grad():
        assert tok.decode(out.latent).shape == images.shape


def _tiny_encoded():
    """A random tiny tokenizer, two random 64 px images and their encoding."""
    torch.manual_seed(0)
    tok = HybridTokenizer(tiny_config()).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    return tok, images, tok.encode(images)


def test_hybrid_round_trip_recovers_encoder_latent():
    tok, images, out = _tiny_encoded()
    with torch.no_grad():
        rebuilt = tok.indices_to_latent(out.indices, out.residual)
        torch.testing.assert_close(rebuilt, out.latent, atol=1e-5, rtol=0)
        # The AR target r_pre is the continuous residual plus the last scale's codes.
        _, r_pre = tok.quantize.latent_to_indices(out.latent, out.patch_nums)
        last_codes = tok.quantize.lookup(out.indices[-1])
        torch.testing.assert_close(out.residual + last_codes, r_pre, atol=1e-5, rtol=0)
        torch.testing.assert_close(tok.reconstruct(images, "hybrid"), tok.decode(out.latent))
        torch.testing.assert_close(tok.reconstruct(images, "discrete"), tok.decode(out.latent - out.residual))


def test_reconstruction_from_the_first_scales_decodes_their_cumulative_codes():
    tok, images, out = _tiny_encoded()
    with torch.no_grad():
        fhats = tok.quantize.latent_to_fhats(out.latent, out.patch_nums)  # phi on every scale, as in a prefix
        for scales in range(1, len(out.patch_nums)):
            expected = tok.decode(fhats[scales - 1])
            torch.testing.assert_close(tok.reconstruct(images, "discrete", scales=scales), expected, atol=1e-4, rtol=0)
    full = tok.reconstruct(images, "discrete", scales=len(out.patch_nums))
    torch.testing.assert_close(full, tok.reconstruct(images, "discrete"), atol=1e-4, rtol=0)
    with pytest.raises(InputError, match="mode='discrete'"):
        tok.reconstruct(images, "hybrid", scales=2)
    with pytest.raises(InputError, match="scales must be between 1 and"):
        tok.reconstruct(images, "discrete", scales=0)


def test_continuous_residual_is_the_distance_to_the_nearest_code():
    torch.manual_seed(0)
    tok = HybridTokenizer(tiny_config(vocab_size=256)).eval()
    latent = torch.randn(2, 4, 16, 16)
    out_indices, r_pre = tok.quantize.latent_to_indices(latent, PATCH_NUMS[256])
    residual = latent - tok.quantize.indices_to_latent(out_indices, PATCH_NUMS[256])
    cells = r_pre.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = torch.cdist(cells.double(), tok.quantize.embedding.weight.double()).min(dim=1).values
    torch.testing.assert_close(
        residual.permute(0, 2, 3, 1).reshape(-1, 4).norm(dim=1).double(), nearest, atol=1e-5, rtol=0
    )
    assert (
        nearest <= cells.norm(dim=1).double() + torch.cdist(torch.zeros(1, 4), tok.quantize.embedding.weight).min()
    ).all()


def test_bad_image_shapes_are_input_errors():
    tok = HybridTokenizer(tiny_config())
    with pytest.raises(InputError, match="multiple of"):
        tok.encode(torch.zeros(1, 3, 40, 40))
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        tok.encode(torch.zeros(3, 32, 32))
    with pytest.raises(InputError, match="square"):
        tok.encode(torch.zeros(1, 3, 32, 64))
    with pytest.raises(InputError, match="ends at"):
        tok.encode(torch.zeros(1, 3, 64, 64), patch_nums=(1, 2, 3))
    with pytest.raises(InputError, match=r"floats in \[-1, 1\].*torch.uint8"):
        tok.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match=rf"latent must be \[B, {tok.config.z_channels}, h, w\], got \(1, 5, 4, 4\)"):
        tok.decode(torch.zeros(1, 5, 4, 4))


# -- loading and saving -----------------------------------------------------------------------------------


def test_released_shape_has_the_official_key_table():
    with torch.device("meta"):
        tok = HybridTokenizer(HybridTokenizerConfig())
    shapes = {k: tuple(v.shape) for k, v in tok.state_dict().items()}
    expected = {
        "encoder.conv_in.weight": (160, 3, 3, 3),
        "encoder.down.0.downsample.conv.weight": (160, 160, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (320, 160, 1, 1),
        "encoder.down.4.block.0.nin_shortcut.weight": (640, 320, 1, 1),
        "encoder.down.4.attn.1.qkv.weight": (1920, 640, 1, 1),
        "encoder.down.4.attn.1.proj_out.weight": (640, 640, 1, 1),
        "encoder.mid.attn_1.qkv.weight": (1920, 640, 1, 1),
        "encoder.conv_out.weight": (32, 640, 3, 3),
        "quant_conv.weight": (32, 32, 3, 3),
        "quantize.embedding.weight": (4096, 32),
        "quantize.quant_resi.qresi_ls.3.weight": (32, 32, 3, 3),
        "quantize.quant_resi.qresi_ls.3.bias": (32,),
        "quantize.ema_vocab_hit_SV": (14, 4096),
        "post_quant_conv.weight": (32, 32, 3, 3),
        "decoder.conv_in.weight": (640, 32, 3, 3),
        "decoder.up.4.attn.2.qkv.weight": (1920, 640, 1, 1),
        "decoder.up.4.upsample.conv.weight": (640, 640, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (320, 640, 1, 1),
        "decoder.up.1.block.0.nin_shortcut.weight": (160, 320, 1, 1),
        "decoder.up.1.upsample.conv.weight": (160, 160, 3, 3),
        "decoder.up.0.block.2.conv2.weight": (160, 160, 3, 3),
        "decoder.norm_out.weight": (160,),
        "decoder.conv_out.weight": (3, 160, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    assert "decoder.up.0.upsample.conv.weight" not in shapes
    assert "encoder.down.4.downsample.conv.weight" not in shapes
    assert not any(".attn." in k for k in shapes if k.startswith(("encoder.down.3", "decoder.up.3")))
    assert not any("nin_shortcut" in k for k in shapes if k.startswith(("decoder.up.4", "decoder.up.2")))


def test_save_pretrained_round_trip_uses_official_layout(tmp_path):
    torch.manual_seed(0)
    tok = HybridTokenizer(tiny_config()).eval()
    disc = {"main.0.weight": torch.randn(8, 3, 4, 4)}
    tok.save_pretrained(tmp_path, discriminator=disc)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "hart_autoencoder_with_disc" and config["ch_mult"] == [1, 1, 2, 2, 4]
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert "vae.quantize.embedding.weight" in keys and "disc.main.0.weight" in keys
    loaded = HybridTokenizer.from_pretrained(tmp_path)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(loaded.reconstruct(images), tok.reconstruct(images), atol=0, rtol=0)


def test_loads_official_pytorch_model_bin(tmp_path, official, hart_fixture_dir):
    state = {"vae." + k: v for k, v in official.state_dict().items()}
    state["disc.main.0.weight"] = torch.zeros(8, 3, 4, 4)
    # A usage buffer recorded with another schedule length must not block loading.
    state["vae.quantize.ema_vocab_hit_SV"] = torch.zeros(14, 640)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((hart_fixture_dir / "tokenizer" / "config.json").read_text())
    loaded = HybridTokenizer.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.quantize.embedding.weight, official.quantize.embedding.weight)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
    HybridTokenizer(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["z_channels"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"quant_conv\.weight: checkpoint \(4, 4, 3, 3\) vs model \(8, 8, 3, 3\)"):
        HybridTokenizer.from_pretrained(tmp_path)


def test_missing_keys_are_listed(tmp_path):
    tok = HybridTokenizer(tiny_config())
    state = {"vae." + k: v for k, v in tok.state_dict().items() if not k.startswith("decoder.conv_out")}
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(tok.config.to_dict()))
    # named as the file spells them, with their prefix
    with pytest.raises(CheckpointError, match=r"2 missing key\(s\): vae\.decoder\.conv_out\.(weight|bias)"):
        HybridTokenizer.from_pretrained(tmp_path)


def test_keys_outside_the_official_prefixes_are_refused(tmp_path):
    tok = HybridTokenizer(tiny_config())
    state = {"vae." + k: v for k, v in tok.state_dict().items()}
    state["disc.conv.weight"] = torch.zeros(1)  # the discriminator is ignored
    torch.save({**state, "encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(tok.config.to_dict()))
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): encoder\.conv_in\.weight$"):
        HybridTokenizer.from_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    HybridTokenizer.from_pretrained(tmp_path)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found|missing file"):
        HybridTokenizer.from_pretrained(tmp_path / "nowhere")
    pipeline = default_model_path("hart")  # model_index.json, transformer/, tokenizer/
    with pytest.raises(
        CheckpointError, match=f"{pipeline} is a HART model folder: its tokenizer is {pipeline}/tokenizer"
    ):
        HybridTokenizer.from_pretrained(pipeline)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    with pytest.raises(CheckpointError, match="no weights in"):
        HybridTokenizer.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        HybridTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{ broken")
    with pytest.raises(CheckpointError, match="config.json"):
        HybridTokenizer.from_pretrained(tmp_path)


def test_unsupported_official_options_are_refused():
    with pytest.raises(CheckpointError, match="double_decoder"):
        HybridTokenizerConfig.from_dict({"double_decoder": True})
    # VAR's discrete-only quantizer would silently run as the hybrid one
    with pytest.raises(CheckpointError, match="quantizer_type='var' is not supported: only HART's hybrid tokenizer"):
        HybridTokenizerConfig.from_dict({"quantizer_type": "var"})
    # 0 and 1 store phi under other names than the shared bank: refused before the weights load
    for share in (0, 1):
        with pytest.raises(CheckpointError, match=f"share_quant_resi={share} is not supported: only a bank of >= 2"):
            HybridTokenizerConfig.from_dict({"share_quant_resi": share})
    assert (
        HybridTokenizerConfig.from_dict({"quantizer_type": "var_hybrid", "share_quant_resi": 2}).share_quant_resi == 2
    )
    config = HybridTokenizerConfig.from_dict({"vocab_size": 8, "levels": [8, 8], "hybrid": False, "ch_mult": [1, 2]})
    assert config.vocab_size == 8 and config.ch_mult == (1, 2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ch", 0, "ch must be a whole number >= 1, got 0"),
        ("norm_groups", 7, "norm_groups 7 does not divide the 8 channels of a layer"),
        ("quant_resi", "x", "quant_resi must be a number, got 'x'"),
        ("vocab_size", "x", "vocab_size must be a whole number >= 1, got 'x'"),
        ("ch_mult", "abc", "ch_mult must be a non-empty list of whole numbers, got 'abc'"),
        ("dropout", 1.0, "dropout must be a number >= 0 and < 1, got 1.0"),
        ("quant_conv_ks", 2, "quant_conv_ks must be odd, got 2"),
        ("v_patch_nums", "x", "v_patch_nums must be a list of whole numbers, got 'x'"),
        ("v_patch_nums", (3, 2, 1), "v_patch_nums must increase strictly from >= 1 over >= 2 scales, got (3, 2, 1)"),
    ],
)
def test_config_values_the_model_cannot_take_are_named(tmp_path, field, value, message):
    with pytest.raises(InputError, match=re.escape(message)):  # as training builds it
        tiny_config(**{field: value})
    HybridTokenizer(tiny_config()).save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, field: list(value) if isinstance(value, tuple) else value}))
    with pytest.raises(CheckpointError, match=re.escape(f"{config_file}: {message}")):
        HybridTokenizer.from_pretrained(tmp_path)


def test_save_pretrained_over_a_folder_swaps_weights_and_config_together(tmp_path, monkeypatch):
    folder = tmp_path / "tokenizer"
    torch.manual_seed(0)
    HybridTokenizer(tiny_config()).save_pretrained(folder)
    (folder / "README.md").write_text("notes")
    (folder / "pytorch_model.bin").write_bytes(b"stale")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    torch.manual_seed(1)
    other = HybridTokenizer(tiny_config(vocab_size=32))

    def crash(path, data):  # after the weights, before the config
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "write_json", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        other.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no new weights beside the old config
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]
    monkeypatch.undo()
    other.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "notes"
    assert not (folder / "pytorch_model.bin").exists()
    assert HybridTokenizer.from_pretrained(folder).config.vocab_size == 32
