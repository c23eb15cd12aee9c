import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.checkpoint import load_state_dict
from arvision.cli import main as cli_main
from arvision.defaults import default_model_path
from arvision.errors import CheckpointError, InputError
from arvision.imaging import pil_to_tensor, resize_center_crop, tensor_to_pil
from arvision.models.diffusion_head import ResidualDiffusionHead
from arvision.pipelines.hart import HartPipeline
from arvision.text.base import TextEncoding
from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig
from hart_common import HART_TINY, load_tiny_hart, make_tiny_qwen2


@pytest.fixture(scope="module")
def pipe():
    return HartPipeline.from_pretrained(HART_TINY)


@pytest.fixture(scope="module")
def embeds(hart_cases):
    return TextEncoding(hart_cases["ctx_context"], hart_cases["ctx_mask"], hart_cases["ctx_position_ids"])


def test_official_layout_loads_ema_by_default(pipe):
    ema = load_state_dict(HART_TINY / "llm" / "ema_model.bin")
    assert torch.equal(pipe.transformer.head.weight, ema["head.weight"])
    raw = HartPipeline.from_pretrained(HART_TINY / "llm", use_ema=False)
    raw_state = load_state_dict(HART_TINY / "llm" / "pytorch_model.bin")
    assert torch.equal(raw.transformer.head.weight, raw_state["head.weight"])


def test_seeded_generation_is_reproducible(pipe, embeds):
    a = pipe(prompt_embeds=embeds, seed=3, progress=False)
    b = pipe(prompt_embeds=embeds, seed=3, progress=False)
    c = pipe(prompt_embeds=embeds, seed=4, progress=False)
    assert len(a.images) == 2 and isinstance(a.images[0], Image.Image) and a.images[0].size == (32, 32)
    assert torch.equal(a.latents, b.latents)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert not torch.equal(a.latents, c.latents)


def test_prefix_indices_reach_the_sampler(pipe, embeds):
    config = pipe.transformer.config
    codes = [torch.randint(config.vocab_size, (2, pn * pn)) for pn in config.patch_nums]
    given = pipe(prompt_embeds=embeds, seed=0, prefix_indices=codes, discrete_only=True, progress=False)
    torch.testing.assert_close(given.latents, pipe.tokenizer.indices_to_latent(codes), atol=1e-5, rtol=0)


def test_image_to_image_keeps_the_image_codes_of_the_first_scales(pipe, embeds):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    scales = len(pipe.transformer.config.patch_nums)
    codes = pipe.tokenizer.encode(pil_to_tensor(resize_center_crop(picture, 32))).indices

    def run(**kwargs):
        steps = []
        out = pipe(prompt_embeds=embeds, seed=0, callback=steps.append, progress=False, **kwargs)
        return out, [step.indices for step in steps]

    # strength 0 keeps every code: the image's discrete tokens, what the tokenizer assembles from them
    kept, _ = run(image=picture, strength=0.0, discrete_only=True)
    torch.testing.assert_close(kept.latents, pipe.tokenizer.indices_to_latent([c.expand(2, -1) for c in codes]))
    # strength 1 redraws every scale: plain generation, draw for draw
    assert torch.equal(run(image=picture, strength=1.0)[0].latents, run()[0].latents)
    # half: the first scales are the image's, for every prompt and every image of a prompt
    _, drawn = run(image=picture, strength=0.5, num_images_per_prompt=2)
    kept_scales = scales - round(0.5 * scales)
    assert 0 < kept_scales < scales
    for si in range(kept_scales):
        assert torch.equal(drawn[si], codes[si].expand(4, -1))
    # one image per prompt
    other = Image.new("RGB", (32, 32), (200, 30, 30))
    _, drawn = run(image=[picture, other], strength=0.5)
    assert torch.equal(drawn[kept_scales - 1][0], codes[kept_scales - 1][0])
    assert not torch.equal(drawn[kept_scales - 1][1], codes[kept_scales - 1][0])
    for kwargs, message in [
        ({"strength": 0.5}, "strength needs an image"),
        ({"image": picture, "strength": 1.5}, r"strength must be within 0..1, got 1.5"),
        ({"image": [picture] * 3}, "3 images for 2 prompts"),
        ({"image": "photo.png"}, "image file not found: photo.png"),
        ({"image": 5}, "image must be a PIL image"),
        ({"image": picture, "prefix_indices": codes[:1]}, "pass image or prefix_indices, not both"),
    ]:
        with pytest.raises(InputError, match=message):
            run(**kwargs)


def test_image_to_image_takes_a_path_or_an_array_as_diffusers_does(pipe, embeds, tmp_path):
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    picture.save(tmp_path / "start.png")

    def run(image):
        return pipe(prompt_embeds=embeds, seed=0, image=image, strength=0.5, progress=False).latents

    as_pil = run(picture)
    assert torch.equal(run(str(tmp_path / "start.png")), as_pil)
    assert torch.equal(run(tmp_path / "start.png"), as_pil)
    assert torch.equal(run(np.asarray(picture)), as_pil)


def test_output_types_and_the_tuple_form(pipe, embeds):
    def run(**kwargs):
        return pipe(prompt_embeds=embeds, seed=0, progress=False, **kwargs)

    out = run()
    assert out[0] is out.images and out["images"] is out.images and out.to_tuple() == (out.images, out.latents)
    pixels = np.stack([np.asarray(image) for image in out.images])
    as_np = run(output_type="np").images
    assert as_np.shape == (2, 32, 32, 3) and as_np.dtype == np.float32
    assert as_np.min() >= 0 and as_np.max() <= 1
    # the PIL images are these values x 255, truncated as the official code does
    assert np.array_equal((as_np * 255).astype(np.uint8), pixels)
    as_pt = run(output_type="pt").images
    torch.testing.assert_close(as_pt, torch.from_numpy(as_np).permute(0, 3, 1, 2), atol=0, rtol=0)
    latent = run(output_type="latent")
    assert torch.equal(latent.images, out.latents) and torch.equal(latent.latents, out.latents)
    images, latents = run(return_dict=False)
    assert [np.asarray(i).tolist() for i in images] == pixels.tolist() and torch.equal(latents, out.latents)
    with pytest.raises(InputError, match="output_type must be one of pil, np, pt, latent, got 'numpy'"):
        run(output_type="numpy")


def test_progress_bars_follow_set_progress_bar_config(embeds, capsys):
    pipe = HartPipeline.from_pretrained(HART_TINY)
    pipe(prompt_embeds=embeds, seed=0)
    assert "HART scales" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt_embeds=embeds, seed=0)
    assert "HART scales" not in capsys.readouterr().err
    pipe(prompt_embeds=embeds, seed=0, progress=True)  # a call's own argument wins
    assert "HART scales" in capsys.readouterr().err


def test_dtype_under_either_name_and_given_to_to_in_the_device_place():
    pipe = HartPipeline.from_pretrained(HART_TINY, dtype=torch.bfloat16)
    assert pipe.transformer.head.weight.dtype == torch.bfloat16
    assert pipe.to(torch.float32) is pipe and pipe.transformer.head.weight.dtype == torch.float32
    with pytest.raises(InputError, match="dtype=torch.bfloat16 and torch_dtype=torch.float16 disagree"):
        HartPipeline.from_pretrained(HART_TINY, dtype=torch.bfloat16, torch_dtype=torch.float16)
    with pytest.raises(InputError, match="to\\(\\) got two dtypes"):
        pipe.to(torch.float16, torch.bfloat16)


def test_an_image_given_for_several_prompts_is_encoded_once(pipe, embeds, monkeypatch):
    picture = Image.new("RGB", (32, 32), (10, 120, 240))
    encoded = []
    encode = pipe.tokenizer.encode
    monkeypatch.setattr(pipe.tokenizer, "encode", lambda x, *a: encoded.append(x.shape[0]) or encode(x, *a))
    both = pipe(prompt_embeds=embeds, seed=0, image=[picture, picture], strength=0.5, progress=False)
    assert encoded == [1]
    one = pipe(prompt_embeds=embeds, seed=0, image=picture, strength=0.5, progress=False)
    assert torch.equal(both.latents, one.latents)


def test_replayed_official_image_through_the_pipeline_decoder(pipe, hart_cases):
    """The pipeline's uint8 conversion of the official final latent equals the official image."""
    with torch.no_grad():
        images = pipe.tokenizer.decode(hart_cases["inf_fhat_final"])
    expected = (hart_cases["inf_image"] * 255).to(torch.uint8).permute(0, 2, 3, 1)
    got = torch.stack([torch.from_numpy(np.array(im)) for im in tensor_to_pil(images)])
    assert (got.int() - expected.int()).abs().max() <= 1


def test_save_pretrained_round_trip(pipe, embeds, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    again = HartPipeline.from_pretrained(tmp_path / "saved")
    a = pipe(prompt_embeds=embeds, seed=1, progress=False).latents
    b = again(prompt_embeds=embeds, seed=1, progress=False).latents
    assert torch.equal(a, b)


def test_save_pretrained_replaces_its_own_entries_atomically_and_keeps_the_rest(pipe, tmp_path, monkeypatch):
    folder = tmp_path / "saved"
    pipe.save_pretrained(folder)
    (folder / "README.md").write_text("notes")
    (folder / "transformer" / "pytorch_model.bin").write_bytes(b"stale")
    pipe.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "notes"  # the user's files are kept...
    assert not (folder / "transformer" / "pytorch_model.bin").exists()  # ...the pipeline's are replaced whole
    (folder / "transformer" / "config.json").write_text("previous")

    def crash(_folder):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipe.tokenizer, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        pipe.save_pretrained(folder)
    # the previous folder, untouched, and nothing half-written beside it
    assert (folder / "transformer" / "config.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_a_qwen2_folder_inside_the_model_folder_is_saved_relative_to_it(tiny_qwen2_24, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen2_24, folder / "text_encoder")
    HartPipeline.from_pretrained(HART_TINY, text_encoder=folder / "text_encoder").save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == {"type": "qwen2", "path": "text_encoder"}
    folder.rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)  # a relative path is read against the model folder, not the current one
    moved = HartPipeline.from_pretrained(tmp_path / "moved")
    assert moved.text_encoder_spec["path"] == str((tmp_path / "moved" / "text_encoder").resolve())
    assert moved("a red cube", seed=0, progress=False).latents.shape == (1, 8, 8, 8)
    moved.save_pretrained(tmp_path / "elsewhere")  # outside the folder: absolute, as before
    index = json.loads((tmp_path / "elsewhere" / "model_index.json").read_text())
    assert index["text_encoder"]["path"] == str((tmp_path / "moved" / "text_encoder").resolve())


@pytest.mark.parametrize(
    "entry, message",
    [
        ("qwen2", r"text_encoder must be \{\"type\": \"minilm\"\} or .*, got 'qwen2'"),
        ({"type": "clip"}, "text_encoder must be"),
        ({"type": "qwen2"}, "the qwen2 text_encoder needs the path of its folder"),
        ({"type": "qwen2", "path": ""}, "the qwen2 text_encoder needs the path of its folder"),
    ],
)
def test_a_malformed_text_encoder_entry_is_named(pipe, tmp_path, entry, message):
    pipe.save_pretrained(tmp_path / "saved")
    index_file = tmp_path / "saved" / "model_index.json"
    index_file.write_text(json.dumps({**json.loads(index_file.read_text()), "text_encoder": entry}))
    with pytest.raises(CheckpointError, match=f"model_index.json: {message}"):
        HartPipeline.from_pretrained(tmp_path / "saved")


def test_a_text_encoder_folder_saved_in_bfloat16_loads_in_float32(tmp_path):
    """Whatever dtype its config declares (the Qwen2 release's is bfloat16; transformers 5 would load in
    that), the encoder loads in float32 as the official code's does, its stored values kept exactly."""
    from transformers import Qwen2Model

    folder = make_tiny_qwen2(tmp_path / "qwen2", hidden=24)
    Qwen2Model.from_pretrained(folder, dtype=torch.float32).to(torch.bfloat16).save_pretrained(folder)
    stored = Qwen2Model.from_pretrained(folder, dtype=torch.bfloat16).state_dict()
    pipe = HartPipeline.from_pretrained(HART_TINY, text_encoder=folder)
    loaded = pipe.text_encoder.model.state_dict()
    assert {v.dtype for v in loaded.values() if v.is_floating_point()} == {torch.float32}
    for key, value in stored.items():
        torch.testing.assert_close(loaded[key], value.float(), atol=0, rtol=0)


def test_to_moves_and_casts_the_text_encoder_too(tiny_qwen2_24):
    qwen = HartPipeline.from_pretrained(HART_TINY, text_encoder=tiny_qwen2_24)
    assert qwen.text_encoder.model.dtype == torch.float32
    assert qwen.to(dtype=torch.bfloat16).text_encoder.model.dtype == torch.bfloat16
    assert qwen.text_encoder.device == qwen.device


def test_an_official_folder_samples_with_more_smooth_as_the_official_scripts_do(pipe, embeds, tmp_path):
    assert pipe.more_smooth is True and pipe.sampling_options().more_smooth is True

    def latents(p, **kwargs):
        return p(prompt_embeds=embeds, seed=3, progress=False, **kwargs).latents

    assert torch.equal(latents(pipe), latents(pipe, more_smooth=True))
    assert not torch.equal(latents(pipe), latents(pipe, more_smooth=False))
    pipe.save_pretrained(tmp_path / "saved")  # the folder keeps it
    assert HartPipeline.from_pretrained(tmp_path / "saved").more_smooth is True
    index_file = tmp_path / "saved" / "model_index.json"
    index = json.loads(index_file.read_text())
    del index["more_smooth"]  # a folder of ours that names none: codes as sampled
    index_file.write_text(json.dumps(index))
    assert HartPipeline.from_pretrained(tmp_path / "saved").more_smooth is False
    index_file.write_text(json.dumps({**index, "more_smooth": "yes"}))
    with pytest.raises(CheckpointError, match="model_index.json: more_smooth must be true or false, got 'yes'"):
        HartPipeline.from_pretrained(tmp_path / "saved")


def test_the_folder_sets_the_default_guidance_scale_and_top_k(pipe, embeds, tmp_path):
    assert (pipe.guidance_scale, pipe.top_k) == (4.5, None)  # official layout: the official scripts' sampling
    pipe.save_pretrained(tmp_path / "saved")
    index_file = tmp_path / "saved" / "model_index.json"
    index = json.loads(index_file.read_text())
    assert (index["guidance_scale"], index["top_k"]) == (4.5, None)
    index_file.write_text(json.dumps({**index, "guidance_scale": 0.0, "top_k": 1}))
    folder = HartPipeline.from_pretrained(tmp_path / "saved")
    assert (folder.guidance_scale, folder.top_k) == (0.0, 1)
    by_default = folder(prompt_embeds=embeds, seed=2, progress=False).latents
    named = pipe(prompt_embeds=embeds, seed=2, guidance_scale=0.0, top_k=1, progress=False).latents
    assert torch.equal(by_default, named)
    official = folder(prompt_embeds=embeds, seed=2, guidance_scale=4.5, top_k=600, progress=False).latents
    assert not torch.equal(by_default, official)
    assert index["guidance_schedule"] == "linear"
    index_file.write_text(json.dumps({**index, "guidance_schedule": "constant"}))
    constant = HartPipeline.from_pretrained(tmp_path / "saved")
    assert constant.guidance_schedule == "constant"
    by_folder = constant(prompt_embeds=embeds, seed=2, progress=False).latents
    by_call = pipe(prompt_embeds=embeds, seed=2, guidance_schedule="constant", progress=False).latents
    torch.testing.assert_close(by_folder, by_call)
    for key, bad in [
        ("guidance_scale", "high"),
        ("guidance_scale", -1),
        ("guidance_scale", True),
        ("top_k", 0),
        ("guidance_schedule", "cosine"),
    ]:
        index_file.write_text(json.dumps({**index, key: bad}))
        with pytest.raises(CheckpointError, match=f"{key} must be"):
            HartPipeline.from_pretrained(tmp_path / "saved")


def test_prompts_with_text_encoder_and_images_per_prompt(tiny_qwen2_24):
    pipe = HartPipeline.from_pretrained(HART_TINY, text_encoder=tiny_qwen2_24)
    out = pipe(["a red cube", "a blue ball"], num_images_per_prompt=2, seed=0, progress=False)
    assert len(out.images) == 4 and out.latents.shape == (4, 8, 8, 8)
    neg = pipe("a red cube", negative_prompt="blurry", seed=0, progress=False)
    plain = pipe("a red cube", seed=0, progress=False)
    assert not torch.equal(neg.latents, plain.latents)
    with pytest.raises(InputError, match="empty"):
        pipe(["a red cube", ""], progress=False)


def test_diffusion_steps_respace_the_residual_head_per_call(pipe, embeds):
    four = pipe(prompt_embeds=embeds, seed=3, diffusion_steps=4, progress=False).latents
    default = pipe(prompt_embeds=embeds, seed=3, progress=False).latents
    head = pipe.transformer.diffloss
    configured = head.sample_schedule
    try:  # the same count set the other way: a head built for 4 sampling steps
        head.sample_schedule = ResidualDiffusionHead(4, 4, width=4, depth=1, num_sampling_steps="4").sample_schedule
        assert head.sample_schedule.num_steps == 4
        torch.testing.assert_close(pipe(prompt_embeds=embeds, seed=3, progress=False).latents, four)
    finally:
        head.sample_schedule = configured
    assert not torch.equal(four, default)
    discrete = pipe(prompt_embeds=embeds, seed=3, discrete_only=True, progress=False).latents
    assert not torch.equal(four, discrete)  # the residual is still drawn, with 4 steps
    for bad in (0, 1001):
        with pytest.raises(InputError, match="diffusion_steps must be within 1..1000"):
            pipe(prompt_embeds=embeds, diffusion_steps=bad, progress=False)


def test_bad_inputs_get_clear_errors(pipe, embeds):
    with pytest.raises(InputError, match="square"):
        pipe(prompt_embeds=embeds, height=32, width=64, progress=False)
    with pytest.raises(InputError, match="multiple"):
        pipe(prompt_embeds=embeds, height=30, width=30, progress=False)
    with pytest.raises(InputError, match="at least"):
        pipe(prompt_embeds=embeds, height=4, width=4, progress=False)
    for bad in (0, -32):  # 0 would otherwise read as "the model's size"
        with pytest.raises(InputError, match=f"height must be a positive number of pixels, got {bad}"):
            pipe(prompt_embeds=embeds, height=bad, width=bad, progress=False)
    assert pipe.schedule_for(256, 256)[-1] == 64  # the tiny tokenizer downsamples 4x: 256 px is the largest
    with pytest.raises(InputError, match=r"260px needs a 65x65 token grid; HART makes grids up to 64x64 \(256px"):
        pipe(prompt_embeds=embeds, height=260, width=260, progress=False)
    with pytest.raises(CheckpointError, match="no text encoder"):
        pipe("a red cube", progress=False)
    bad = TextEncoding(embeds.hidden[:, :8], embeds.mask[:, :8], embeds.position_ids[:, :8])
    with pytest.raises(InputError, match="expects"):
        pipe(prompt_embeds=bad, progress=False)
    with pytest.raises(InputError, match="class_labels need a class-conditional model"):
        pipe(prompt_embeds=embeds, class_labels=[1], progress=False)
    for options, message in [
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"top_k": -3}, "top_k must be >= 0"),
        ({"top_p": 2.0}, "top_p must be within"),
        ({"temperature": -0.5}, "temperature must be 0 \\(greedy\\) or a finite number"),
        ({"temperature": float("nan")}, "temperature must be 0 \\(greedy\\) or a finite number"),
        ({"temperature": 1e-30}, "finite number >= 0.0001"),
        ({"guidance_scale": 3.5e38}, "guidance_scale \\(cfg\\) must be within \\[0, 10000\\]"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"guidance_scale": "2"}, "guidance_scale \\(cfg\\) must be a number, got '2'"),
        ({"top_k": 1.5}, "top_k must be a whole number, got 1.5"),
        ({"temperature": True}, "temperature must be a number, got True"),
        ({"diffusion_steps": 2.5}, "diffusion_steps must be a whole number, got 2.5"),
        ({"diffusion_steps": 0}, "diffusion_steps must be within 1..1000"),
    ]:
        with pytest.raises(InputError, match=message):
            pipe(prompt_embeds=embeds, progress=False, **options)


def test_conflicting_or_malformed_arguments_are_refused(pipe, embeds):
    with pytest.raises(InputError, match="pass seed or generator, not both"):
        pipe(prompt_embeds=embeds, seed=7, generator=torch.Generator().manual_seed(8), progress=False)
    with pytest.raises(InputError, match="pass prompt or prompt_embeds, not both"):
        pipe("a red cube", prompt_embeds=embeds, progress=False)
    for bad in (2.0, True, 0):
        with pytest.raises(InputError, match=f"num_images_per_prompt must be a whole number >= 1, got {bad}"):
            pipe(prompt_embeds=embeds, num_images_per_prompt=bad, progress=False)


def test_bad_prompt_embeds_are_named_before_torch_sees_them(pipe, embeds):
    h, m, p = embeds.hidden, embeds.mask, embeds.position_ids
    for bad, message in [
        (TextEncoding(h, m[:, :8], p), r"prompt_embeds: context_mask has shape \(2, 8\), expected \(2, 16\)"),
        (TextEncoding(h, m, p[:1]), r"prompt_embeds: position_ids has shape \(1, 16\), expected \(2, 16\)"),
        (TextEncoding(h[..., :7], m, p), r"prompt_embeds: context has shape \(2, 16, 7\), the model expects"),
    ]:
        with pytest.raises(InputError, match=message):
            pipe(prompt_embeds=bad, progress=False)


def _tokenizer(vocab_size, z_channels):
    config = HybridTokenizerConfig(
        vocab_size=vocab_size, z_channels=z_channels, ch=32, ch_mult=(1, 2, 1), v_patch_nums=(1, 2, 3, 4, 6, 8)
    )
    return HybridTokenizer(config)


def test_a_tokenizer_of_another_codebook_is_refused(pipe, tmp_path):
    """The fixture's transformer predicts 640 codes of 8 channels; a smaller codebook failed deep in torch, a
    larger one generated silently from the wrong codes."""
    for vocab, channels, message in [
        (320, 8, "codebook has 320 codes but the transformer predicts 640"),
        (1280, 8, "codebook has 1280 codes but the transformer predicts 640"),
        (640, 16, "latent has 16 channels but the transformer takes 8"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            HartPipeline(load_tiny_hart(), _tokenizer(vocab, channels))
    pipe.save_pretrained(tmp_path / "saved")
    shutil.rmtree(tmp_path / "saved" / "tokenizer")
    _tokenizer(1280, 8).save_pretrained(tmp_path / "saved" / "tokenizer")
    with pytest.raises(CheckpointError, match="codebook has 1280 codes but the transformer predicts 640"):
        HartPipeline.from_pretrained(tmp_path / "saved")


def test_other_resolution_schedules_run(pipe, embeds):
    """RoPE is normalised to the last scale, so any tokenizer schedule works: 64 px uses the 16x16 preset,
    48 px a geometric 12x12 schedule."""
    assert pipe.schedule_for(64, 64) == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    for size in (64, 48):
        out = pipe(prompt_embeds=embeds, height=size, width=size, seed=0, progress=False, guidance_scale=0)
        assert out.images[0].size == (size, size)


def _copy_fixture(tmp_path):
    folder = tmp_path / "hart"
    shutil.copytree(HART_TINY, folder, ignore=shutil.ignore_patterns("cases.safetensors", "*.md"))
    for f in folder.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    return folder


def test_missing_files_and_mismatches_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        HartPipeline.from_pretrained(tmp_path / "nope")
    folder = _copy_fixture(tmp_path)
    (folder / "llm" / "ema_model.bin").unlink()
    with pytest.raises(CheckpointError, match="use_ema=False"):
        HartPipeline.from_pretrained(folder)
    config = json.loads((folder / "llm" / "config.json").read_text())
    (folder / "llm" / "config.json").write_text(json.dumps({**config, "depth": 3}))
    with pytest.raises(CheckpointError, match="blocks.2"):
        HartPipeline.from_pretrained(folder, use_ema=False)
    (folder / "llm" / "config.json").write_text(json.dumps({**config, "context_dim": 32}))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        HartPipeline.from_pretrained(folder, use_ema=False)
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer"):
        HartPipeline.from_pretrained(folder, use_ema=False)


def test_cli_generate_writes_images(tiny_qwen2_24, tmp_path, capsys):
    out = tmp_path / "img.png"
    args = [
        "generate",
        "a red cube",
        "-n",
        "2",
        "--seed",
        "1",
        "--cfg",
        "3",
        "--quiet",
        "--model",
        str(HART_TINY),
        "--text-encoder",
        str(tiny_qwen2_24),
        "-o",
        str(out),
    ]
    assert cli_main(args) == 0
    written = [tmp_path / "img-000.png", tmp_path / "img-001.png"]
    assert all(p.is_file() for p in written)
    assert str(written[0]) in capsys.readouterr().out
    assert cli_main([*args[:-1], str(tmp_path / "grid.png"), "--grid"]) == 0
    assert Image.open(tmp_path / "grid.png").size == (64, 32)  # two images side by side
    # --diffusion-steps reaches the pipeline: 4 steps draw other images than the default 8
    assert cli_main([*args[:-1], str(tmp_path / "four.png"), "--diffusion-steps", "4"]) == 0
    four = Image.open(tmp_path / "four-000.png").convert("RGB").tobytes()
    assert four != Image.open(written[0]).convert("RGB").tobytes()


def test_cli_errors_exit_2(tmp_path, capsys):
    assert cli_main(["generate", "x", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "o.png")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli_main(["generate", "x", "--model", str(HART_TINY), "-o", str(tmp_path / "o.png")]) == 2
    assert "no text encoder" in capsys.readouterr().err
    assert cli_main(["generate", "x", "--model", str(HART_TINY), "-o", str(tmp_path / "image")]) == 2
    assert "--output must end in one of .png" in capsys.readouterr().err


def tiny_class_conditional(**overrides):
    """A 10-class HART transformer that fits the fixture's tokenizer (640 codes of 8 channels)."""
    from arvision.models.hart import HartConfig, HartTransformer

    settings = dict(embed_dim=32, depth=1, num_heads=2, num_classes=10, patch_nums=(1, 2, 3, 4, 6, 8))
    settings.update(vocab_size=640, latent_channels=8, diff_width=16, diff_depth=1, **overrides)
    return HartTransformer(HartConfig(**settings))


def test_class_conditional_pipeline_round_trip(pipe, tmp_path):
    torch.manual_seed(0)
    id2label = {1: "tench, Tinca tinca", 7: "cock"}
    c2i = HartPipeline(tiny_class_conditional(), pipe.tokenizer, id2label=id2label)
    c2i.save_pretrained(tmp_path / "c2i")
    loaded = HartPipeline.from_pretrained(tmp_path / "c2i")
    a = c2i(class_labels=[1, 7], seed=0, progress=False)
    b = loaded(class_labels=[1, 7], seed=0, progress=False)
    assert len(a.images) == 2 and torch.equal(a.latents, b.latents)
    with pytest.raises(InputError, match="class"):
        loaded(class_labels=[10], progress=False)
    # class names as prompts, each comma-separated synonym included (the DiT pipeline's convention)
    assert loaded.id2label == id2label and loaded.labels == {"cock": 7, "tench": 1, "Tinca tinca": 1}
    by_name = loaded(["Tinca tinca", "cock"], seed=0, progress=False)
    assert torch.equal(by_name.latents, a.latents)
    with pytest.raises(InputError, match="unknown class name 'cok'; did you mean 'cock'"):
        loaded("cok", progress=False)
    with pytest.raises(InputError, match="pass class_labels or class names as prompts, not both"):
        loaded("cock", class_labels=[1], progress=False)
    with pytest.raises(InputError, match="no class names"):
        HartPipeline(tiny_class_conditional(), pipe.tokenizer)("tench", progress=False)
    with pytest.raises(InputError, match=r"outside \[0, 10\)"):
        HartPipeline(tiny_class_conditional(), pipe.tokenizer, id2label={10: "ten"})
    index = tmp_path / "c2i" / "model_index.json"
    index.write_text(index.read_text().replace('"7": "cock"', '"seven": "cock"'))
    with pytest.raises(CheckpointError, match="id2label must map label numbers"):
        HartPipeline.from_pretrained(tmp_path / "c2i")


def test_a_class_name_shared_by_several_labels_is_ambiguous(pipe):
    c2i = HartPipeline(tiny_class_conditional(), pipe.tokenizer, id2label={1: "crane", 5: "crane, bird, bird"})
    assert c2i.labels == {"bird": 5}
    assert c2i.get_label_ids(["bird"]) == [5]
    with pytest.raises(InputError, match=r"class name 'crane' is ambiguous: labels 1, 5"):
        c2i("crane", progress=False)


def test_a_learned_level_table_limits_the_schedule(pipe):
    c2i = HartPipeline(tiny_class_conditional(use_timestep_embed=False), pipe.tokenizer)
    assert c2i(class_labels=[3], seed=0, progress=False).images[0].size == (32, 32)
    with pytest.raises(InputError, match="256px: the schedule .* has 14 scales but this model's level table has 6"):
        c2i(class_labels=[3], height=256, width=256, progress=False)


def test_reduced_precision_runs(embeds):
    half = HartPipeline.from_pretrained(HART_TINY, torch_dtype=torch.bfloat16)
    assert half.transformer.head.weight.dtype == torch.bfloat16
    assert {p.dtype for p in half.tokenizer.parameters()} == {torch.float32}  # the official code's VAE too
    out = half(prompt_embeds=embeds, seed=0, progress=False)
    assert torch.isfinite(out.latents.float()).all() and out.images[0].size == (32, 32)


def test_save_pretrained_refuses_the_folder_it_runs_in(pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in (".", str(tmp_path), str(tmp_path.parent)):
        with pytest.raises(InputError, match="holds the current directory"):
            pipe.save_pretrained(folder)
    assert tmp_path.is_dir() and not (tmp_path / "model_index.json").exists()


@pytest.mark.parametrize("more_smooth", [False, True])
def test_a_generator_per_image_draws_each_image_as_it_comes_alone(pipe, embeds, more_smooth):
    """diffusers' convention: with one generator per image, image i does not depend on the batch around it
    (token draws, Gumbel mixing and the residual head's noise all come from its own generator)."""
    seeds = [5, 6]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    batch = pipe(prompt_embeds=embeds, generator=generators, more_smooth=more_smooth, progress=False).latents
    for i, seed in enumerate(seeds):
        alone = TextEncoding(embeds.hidden[i : i + 1], embeds.mask[i : i + 1], embeds.position_ids[i : i + 1])
        solo = pipe(prompt_embeds=alone, seed=seed, more_smooth=more_smooth, progress=False).latents
        torch.testing.assert_close(batch[i : i + 1], solo, atol=1e-3, rtol=0)  # batched float sums differ
    shared = pipe(prompt_embeds=embeds, seed=5, more_smooth=more_smooth, progress=False).latents
    assert not torch.allclose(shared[1], batch[1], atol=1e-2)  # one generator for the batch is another stream
    with pytest.raises(InputError, match="3 generators for 2 samples"):
        pipe(prompt_embeds=embeds, generator=[torch.Generator() for _ in range(3)], progress=False)


def test_the_pipeline_checks_its_default_sampling_when_built(pipe):
    for options, message in [
        ({"guidance_schedule": "cosine"}, "guidance_schedule must be one of linear, constant"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"top_k": -2}, "top_k must be >= 0"),
    ]:
        with pytest.raises(InputError, match=message):
            HartPipeline(pipe.transformer, pipe.tokenizer, **options)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("embed_dim", "abc", "embed_dim must be a whole number >= 1, got 'abc'"),
        ("embed_dim", 0, "embed_dim must be a whole number >= 1, got 0"),
        ("num_heads", 0, "num_heads must be a whole number >= 1, got 0"),
        ("patch_nums", 5, "patch_nums must be a list of whole numbers, got 5"),
        ("context_dim", "x", "context_dim must be a whole number >= 1, got 'x'"),
        ("latent_channels", "x", "latent_channels must be a whole number >= 1, got 'x'"),
        ("rope_theta", "x", "rope_theta must be a number > 0, got 'x'"),  # loaded, and failed at the first call
    ],
)
def test_a_malformed_transformer_config_is_named_with_its_file(tmp_path, field, value, message):
    folder = tmp_path / "hart"
    shutil.copytree(default_model_path("hart"), folder)
    config_file = folder / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), field: value}))
    with pytest.raises(CheckpointError, match=re.escape(f"{config_file}: {message}")):
        HartPipeline.from_pretrained(folder)


def test_a_malformed_official_config_is_named_with_its_file(tmp_path):
    folder = _copy_fixture(tmp_path)
    config_file = folder / "llm" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "mlp_ratio": "four"}))
    with pytest.raises(CheckpointError, match=re.escape(f"{config_file}: mlp_ratio must be a number > 0, got 'four'")):
        HartPipeline.from_pretrained(folder)


@pytest.mark.parametrize("seed", ["abc", 1.5, True, [1, 2], 2**70, -(2**70)])
def test_a_seed_torch_cannot_take_is_named(pipe, embeds, seed):
    with pytest.raises(InputError, match=re.escape(f"seed must be a whole number in [0, 2**63), got {seed!r}")):
        pipe(prompt_embeds=embeds, seed=seed, progress=False)


def test_call_arguments_of_the_wrong_type_are_named(pipe, embeds):
    codes = [torch.zeros(2, pn * pn, dtype=torch.long) for pn in pipe.transformer.config.patch_nums[:2]]
    vocab = pipe.transformer.config.vocab_size
    picture = Image.new("RGB", (32, 32))
    for options, message in [
        ({"height": "64"}, "height must be a whole number, got '64'"),
        ({"image": picture, "strength": "0.5"}, "strength must be a number, got '0.5'"),
        ({"prompt_embeds": embeds.hidden}, "prompt_embeds must be a TextEncoding (hidden, mask, position_ids"),
        (
            {"prefix_indices": [codes[0], codes[1] + vocab]},
            f"prefix_indices[1] has codes outside the vocabulary [0, {vocab})",
        ),
        (
            {"prefix_indices": [codes[0].float()]},
            "prefix_indices[0] must be an integer tensor of codes, got torch.float32",
        ),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            pipe(**{"prompt_embeds": embeds, **options, "progress": False})
    with pytest.raises(InputError, match="got bytes as the prompt: pass text"):
        pipe(b"abc", progress=False)
    # codes of any integer type are taken
    out = pipe(prompt_embeds=embeds, prefix_indices=[c.int() for c in codes], seed=0, progress=False)
    assert torch.equal(out.latents, pipe(prompt_embeds=embeds, prefix_indices=codes, seed=0, progress=False).latents)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"text_encoder": 5},
            "text_encoder must be a Qwen2 folder or a text encoder (encode(), hidden_size, max_length), got int",
        ),
        (
            {"torch_dtype": "float16"},
            "torch_dtype must be a floating-point torch dtype such as torch.float16, got 'float16'",
        ),
        ({"dtype": torch.int64}, "dtype must be a floating-point torch dtype such as torch.float16, got torch.int64"),
        ({"device": "bogus"}, "unknown device 'bogus'"),
    ],
)
def test_from_pretrained_arguments_of_the_wrong_type_are_named(arguments, message):
    with pytest.raises(InputError, match=re.escape(message)):
        HartPipeline.from_pretrained(HART_TINY, **arguments)


def test_a_folder_that_is_not_a_path_or_a_device_torch_does_not_know_is_named(pipe):
    with pytest.raises(InputError, match="the model folder must be a path, got NoneType"):
        HartPipeline.from_pretrained(None)
    with pytest.raises(InputError, match="unknown device 'bogus'"):
        pipe.to("bogus")
    with pytest.raises(InputError, match="dtype must be a floating-point torch dtype"):
        pipe.to(torch.int64)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="device 'cuda' is not available: this machine has 0 CUDA devices"):
            pipe.to("cuda")
