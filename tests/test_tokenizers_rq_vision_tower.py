import PIL.Image
import pytest
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from arvision.data.media import preprocess_image
from arvision.errors import InputError
from arvision.tokenizers.rq_vision_tower import RQVisionTower
from arvision.tokenizers.siglip_presets import SIGLIP_PRESETS, siglip_preset
from vilau_common import cases, fixture_pipeline, max_abs, tiny_tower_config


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return RQVisionTower(tiny_tower_config()).eval()


def test_features_are_the_penultimate_layer_before_post_layernorm(tower):
    pixels = torch.randn(2, 3, 16, 16)
    vision = SiglipVisionModel(SiglipVisionConfig(**tower.config.siglip["vision_config"])).eval()
    vision.load_state_dict(tower.siglip.vision_model.state_dict())
    with torch.no_grad():
        reference = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        features = tower.features(pixels)
    assert features.shape == (2, 4, 4, 32)
    torch.testing.assert_close(features.reshape(2, 16, 32), reference, atol=1e-5, rtol=0)


def test_encode_decode_shapes_and_latent_resize():
    torch.manual_seed(0)
    plain = RQVisionTower(tiny_tower_config()).eval()
    codes, z_q = plain.encode(torch.randn(1, 3, 16, 16))
    assert codes.shape == (1, 4, 4, 3) and z_q.shape == (1, 4, 4, 32)
    assert plain.decode(z_q).shape == (1, 3, 16, 16)
    # The 384 model's trick: resize the latent grid bilinearly before the x4 (here) decoder.
    resized = RQVisionTower(tiny_tower_config(decoder_latent_shape=(3, 3))).eval()
    resized.load_state_dict(plain.state_dict())
    assert resized.decode(z_q).shape == (1, 3, 12, 12)
    z = torch.nn.functional.interpolate(z_q.permute(0, 3, 1, 2), size=(3, 3), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized.decode(z_q), plain.decoder(plain.post_quant_conv(z)))


def test_leftover_pixels_are_dropped_by_the_valid_patch_convolution():
    # As 384 px with 14 px patches gives 27 x 27 tokens (378 px seen): here 18 px with 4 px patches -> 4 x 4.
    config = tiny_tower_config()
    config.siglip["vision_config"]["image_size"] = 18
    assert config.grid == 4
    torch.manual_seed(0)
    tower = RQVisionTower(config).eval()
    codes, _ = tower.encode(torch.randn(1, 3, 18, 18))
    assert codes.shape == (1, 4, 4, 3)


@pytest.mark.parametrize(
    ("pixels", "match"),
    [
        (torch.zeros(1, 3, 32, 32), r"pixels must be \[B, 3, 16, 16\].*\(1, 3, 32, 32\)"),
        (torch.zeros(1, 3, 17, 17), r"pixels must be \[B, 3, 16, 16\].*\(1, 3, 17, 17\)"),  # not silently cropped
        (torch.zeros(1, 3, 16, 20), r"pixels must be \[B, 3, 16, 16\]"),
        (torch.zeros(1, 1, 16, 16), r"pixels must be \[B, 3, 16, 16\]"),
        (torch.zeros(1, 4, 16, 16), r"pixels must be \[B, 3, 16, 16\]"),
        (torch.zeros(1, 16, 16, 3), r"pixels must be \[B, 3, 16, 16\].*\(1, 16, 16, 3\)"),  # HWC
        (torch.zeros(3, 16, 16), r"pixels must be \[B, 3, 16, 16\].*\(3, 16, 16\)"),  # unbatched
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "pixels must be floats in \\[-1, 1\\].*uint8"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN or infinite"),
        (torch.zeros(1, 3, 16, 16).index_fill_(2, torch.tensor([5]), float("inf")), "NaN or infinite"),
    ],
)
def test_encode_and_features_reject_unusable_pixels(tower, pixels, match):
    with pytest.raises(InputError, match=match):
        tower.encode(pixels)
    with pytest.raises(InputError, match=match):
        tower.features(pixels)


def test_pixels_in_another_float_dtype_are_cast_to_the_tower_dtype(tower):
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        codes, z_q = tower.encode(pixels)
        codes64, z_q64 = tower.encode(pixels.double())
        _, z_q16 = tower.encode(pixels.bfloat16())
    assert torch.equal(codes64, codes) and z_q64.dtype == z_q16.dtype == torch.float32


def test_decode_codes_rejects_codes_outside_the_codebook(tower):
    codes = torch.zeros(1, 4, 4, 3, dtype=torch.long)
    with pytest.raises(InputError, match=r"codes must be in \[0, 64\), got values in \[0, 64\]"):
        tower.decode_codes(codes.index_fill(1, torch.tensor([2]), 64))  # the padding row
    with pytest.raises(InputError, match="1 <= D <= depth 3"):
        tower.decode_codes(torch.zeros(1, 4, 4, 4, dtype=torch.long))
    with pytest.raises(InputError, match="integers"):
        tower.codes_to_latent(codes.float())


def test_shipped_siglip_presets_have_the_released_shapes():
    large = siglip_preset("google/siglip-large-patch16-256")["vision_config"]
    so400m = siglip_preset("google/siglip-so400m-patch14-384")["vision_config"]
    grid = large["image_size"] // large["patch_size"]
    assert (large["hidden_size"], large["num_hidden_layers"], grid) == (1024, 24, 16)
    assert (so400m["hidden_size"], so400m["intermediate_size"], so400m["image_size"] // so400m["patch_size"]) == (
        1152,
        4304,
        27,
    )
    with pytest.raises(KeyError):
        siglip_preset("google/unknown")
    assert siglip_preset("google/siglip-large-patch16-256") is not SIGLIP_PRESETS["google/siglip-large-patch16-256"]


# ----- parity with the official code (fixtures/vilau-tiny-a) -----


def test_preprocessing_matches_the_official_processor():
    c = cases()
    images = [PIL.Image.fromarray(c[k].numpy()) for k in ("img.astronaut_uint8", "img.random_uint8")]
    pixels = torch.stack([preprocess_image(im, 32) for im in images])
    assert max_abs(pixels, c["vt.pixel_values"]) < 1e-6


def test_fixture_features_codes_z_q_and_decoded_image():
    c = cases()
    tower = fixture_pipeline().model.vision_tower
    with torch.no_grad():
        features = tower.features(c["vt.pixel_values"])
        codes, z_q = tower.encode(c["vt.pixel_values"])
        decoded = tower.decode(c["vt.z_q"])
        cumsum = tower.embed_codes(c["vt.codes"]).cumsum(-2)
    assert max_abs(features, c["vt.features"]) < 1e-4
    assert torch.equal(codes, c["vt.codes"])
    assert max_abs(z_q, c["vt.z_q"]) < 1e-4
    assert max_abs(cumsum, c["vt.code_emb_cumsum"]) < 1e-5
    assert max_abs(decoded, c["vt.decoded"]) < 1e-4
    # The release runs the decoder in bf16; fp32 decoding stays within bf16 rounding of it.
    assert max_abs(decoded, c["vt.decoded_bf16_official"]) < 0.1
