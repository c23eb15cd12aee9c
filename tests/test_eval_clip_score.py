import json

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.cli import main
from arvision.errors import CheckpointError, InputError
from arvision.eval.clip_score import clip_scores, load_clip

WORDS = ["<|startoftext|>", "<|endoftext|>", "[UNK]", "a", "red", "blue", "green", "cube", "ball", "photo", "of"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIP saved as a transformers folder: word-level tokenizer, image processor, weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("clip")
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)]
    )
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", **specials).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    tower = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**tower, "vocab_size": len(WORDS), "max_position_embeddings": 8, "bos_token_id": 0, "eos_token_id": 1}
    config = CLIPConfig(
        text_config={**text, "pad_token_id": 1},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder


def _images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)) for _ in range(count)]


PROMPTS = ["a red cube", "a photo of a blue ball", "green", "a cube of a ball of a red photo of a blue cube"]


def test_scores_are_100_times_the_positive_cosine_the_model_itself_computes(clip_folder):
    clip = load_clip(clip_folder)
    images = _images(4)
    got = clip_scores(clip, images, PROMPTS, batch_size=3, progress=False)
    # CLIPModel's forward: logits_per_image = exp(logit_scale) * cosine similarities
    text = clip.tokenizer(PROMPTS, padding=True, truncation=True, max_length=8, return_tensors="pt")
    pixels = clip.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = clip.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    cosine = out.logits_per_image.diag() / clip.model.logit_scale.exp()
    torch.testing.assert_close(got, (100 * cosine).clamp(min=0), rtol=1e-5, atol=1e-4)
    assert (cosine < 0).any() and (cosine > 0).any()  # both sides of the clamp are exercised
    assert torch.allclose(clip_scores(clip, images, PROMPTS, batch_size=1, progress=False), got, atol=1e-4)


def test_mismatched_counts_and_folders_without_a_clip_are_named(tmp_path, clip_folder):
    with pytest.raises(InputError, match="3 images for 4 prompts"):
        clip_scores(load_clip(clip_folder), _images(3), PROMPTS, progress=False)
    with pytest.raises(InputError, match="at least one"):
        clip_scores(load_clip(clip_folder), [], [], progress=False)
    with pytest.raises(CheckpointError, match="config.json missing"):
        load_clip(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="is not a CLIP folder"):
        load_clip(tmp_path / "other")


def test_a_truncated_weights_file_is_named_with_its_folder(tmp_path, clip_folder):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(clip_folder, damaged)
    (damaged / "model.safetensors").write_bytes((clip_folder / "model.safetensors").read_bytes()[:4])
    with pytest.raises(CheckpointError, match=f"{damaged} is not a CLIP folder of transformers: .*header"):
        load_clip(damaged)


def test_eval_clip_score_pairs_a_prompt_set_folder_with_its_prompts(tmp_path, clip_folder, capsys):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:2]) + "\n")
    folder = tmp_path / "images"
    folder.mkdir()
    images = _images(4, seed=1)
    for image, name in zip(images, ["00000_0.png", "00000_1.png", "00001_0.png", "00001_1.png"]):
        image.save(folder / name)
    (folder / "notes.txt").write_text("not an image of the set")
    args = ["eval", "clip-score", "--images", str(folder), "--prompts-file", str(tmp_path / "prompts.txt")]
    assert main([*args, "--clip", str(clip_folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    reread = [Image.open(folder / name).convert("RGB") for name in sorted(p.name for p in folder.glob("*.png"))]
    expected = clip_scores(load_clip(clip_folder), reread, [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, progress=False)
    assert report["clip_score"] == pytest.approx(float(expected.mean()), abs=1e-4)
    assert report["images"] == 4
    _images(1)[0].save(folder / "00002.png")  # an image of a third prompt the file does not have
    assert main([*args, "--clip", str(clip_folder)]) == 2
    assert "00002.png is an image of prompt 2, but the prompts file has 2 prompts" in capsys.readouterr().err
