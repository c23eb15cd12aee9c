import json
import re
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from arvision.checkpoint import save_state_dict
from arvision.data.media import load_video_frames, to_pil
from arvision.errors import CheckpointError, InputError
from arvision.pipelines import vila_u_checkpoint
from arvision.pipelines.vila_u import TextSampling, VilaUPipeline, is_vila_u_folder
from arvision.pipelines.vila_u_checkpoint import tower_state_from_release, tower_state_to_release
from arvision.text import vicuna
from media_common import write_video
from vilau_common import FIXTURE, cases, fixture_pipeline


@pytest.fixture
def folder(tmp_path):
    """A writable copy of the fixture checkpoint."""
    target = tmp_path / "vila-u"
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("cases.safetensors", "*.md"))
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _astronaut():
    return PIL.Image.fromarray(cases()["img.astronaut_uint8"].numpy())


def test_release_folder_is_detected():
    assert is_vila_u_folder(FIXTURE)
    assert not is_vila_u_folder(FIXTURE / "llm")


def test_generation_config_drives_text_sampling():
    s = fixture_pipeline().text_sampling
    assert (s.temperature, s.top_p, s.top_k, s.eos_token_id) == (0.9, 0.6, 50, 2)


def test_describe_greedy_reproduces_the_official_answer(tmp_path):
    pipe = fixture_pipeline()
    answer = pipe.describe(_astronaut(), "What is in the image?", temperature=0.0, max_new_tokens=6)
    assert answer == pipe.tokenizer.decode(cases()["und.greedy_ids"][0].tolist(), skip_special_tokens=True).strip()
    path = tmp_path / "astronaut.png"
    _astronaut().save(path)
    assert pipe.describe(path, "What is in the image?", temperature=0.0, max_new_tokens=6) == answer


def test_describe_batch_answers_as_describe_does_one_by_one(monkeypatch):
    pipe = fixture_pipeline()
    image = _astronaut()
    frames = [image, image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)]
    media = [image, frames, image.rotate(90)]
    questions = ["What is in the image?", "What happens?", "Describe the colours of this picture in detail."]
    alone = [pipe.describe(m, q, temperature=0.0, max_new_tokens=6) for m, q in zip(media, questions)]
    assert pipe.describe_batch(media, questions, temperature=0.0, max_new_tokens=6) == alone
    reads = []
    read = VilaUPipeline._frames
    monkeypatch.setattr(pipe, "_frames", lambda item, num_frames: reads.append(item) or read(pipe, item, num_frames))
    twice = pipe.describe_batch([frames, frames], questions[:2], temperature=0.0, max_new_tokens=6)
    assert twice[1] == alone[1] and len(reads) == 1  # one read and one encoding for the shared video
    with pytest.raises(InputError, match="2 images or videos for 1 questions"):
        pipe.describe_batch([image, image], ["What?"])
    with pytest.raises(InputError, match="no questions"):
        pipe.describe_batch([], [])


def test_describe_sampling_is_seeded_and_videos_use_one_block_per_frame(tmp_path):
    pipe = fixture_pipeline()
    a = pipe.describe(_astronaut(), "Describe it.", seed=1, max_new_tokens=8)
    b = pipe.describe(_astronaut(), "Describe it.", seed=1, max_new_tokens=8)
    assert a == b
    video = write_video(tmp_path / "clip.mp4", [i * 20 for i in range(10)])
    answer = pipe.describe(video, "What happens?", temperature=0.0, max_new_tokens=4, num_frames=4)
    frames = load_video_frames(video, 4)
    assert pipe.describe(frames, "What happens?", temperature=0.0, max_new_tokens=4) == answer
    assert pipe.prompt_ids("What happens?", 4).count(-200) == 4


def test_a_seed_per_question_samples_each_answer_as_it_comes_alone():
    pipe = fixture_pipeline()
    image = _astronaut()
    media = [image, image.rotate(90), image]
    questions = ["Describe it.", "What is in the image?", "Describe it."]
    seeds = [3, 4, 5]
    batch = pipe.describe_batch(media, questions, seed=seeds, max_new_tokens=8)
    alone = [pipe.describe(m, q, seed=s, max_new_tokens=8) for m, q, s in zip(media, questions, seeds)]
    assert batch == alone
    assert batch[0] != batch[2]  # the same question about the same image, drawn from other seeds
    with pytest.raises(InputError, match=r"a list of 3 \(one per question\)"):
        pipe.describe_batch(media, questions, seed=[1, 2])


def test_a_prompt_longer_than_the_context_is_named():
    pipe = fixture_pipeline()
    with pytest.raises(InputError, match="more than the model's 4096: shorten the question"):
        pipe.describe(_astronaut(), "why " * 5000, temperature=0.0, max_new_tokens=1)
    with pytest.raises(InputError, match="beyond the model's 4096; shorten the prompt"):
        pipe.generate_image("why " * 5000)
    pipe.check_prompt("why " * 10)
    config = pipe.model.llm.config
    text = len(vicuna.tokenize(vicuna.generation_prompt("a cat", False), pipe.tokenizer))
    needed = text + pipe.config.tower.grid**2 - 1  # the last visual token is drawn, never fed back
    try:
        config.max_position_embeddings = needed
        pipe.check_prompt("a cat")
        config.max_position_embeddings = needed - 1
        with pytest.raises(InputError, match=f"beyond the model's {needed - 1}"):
            pipe.check_prompt("a cat")
    finally:
        config.max_position_embeddings = 4096


def test_answers_end_where_they_fill_the_context(monkeypatch):
    pipe = fixture_pipeline()
    image = _astronaut()
    features = pipe.model.encode_images(pipe.pixels([image]))[1]
    full = "why " * 1992  # with the image's tokens, 2 positions short of the fixture's 4096
    assert (
        pipe.model.llm.config.max_position_embeddings - len(pipe.model.splice(pipe.prompt_ids(full, 1), features)) == 2
    )
    lengths = []
    generate = pipe.model.generate_text_batch

    def recorded(*args, **kwargs):
        ids, logits = generate(*args, **kwargs)
        lengths.append([len(row) for row in ids])
        return ids, logits

    monkeypatch.setattr(pipe.model, "generate_text_batch", recorded)
    pipe.describe_batch([image, image], [full, "why"], temperature=0.0, max_new_tokens=30)
    assert lengths == [[2, 30]]  # each answer capped by what its own prompt leaves of the context


def test_reconstruct_matches_the_official_decoding_and_accepts_any_mode():
    c = cases()
    pipe = fixture_pipeline()
    (image,) = pipe.reconstruct(_astronaut())
    official = ((c["vt.decoded"][0] + 1) * 127.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8)
    assert (torch.from_numpy(np.array(image)).int() - official.int()).abs().max() <= 1
    grey = _astronaut().convert("L")
    assert pipe.reconstruct([grey, _astronaut().convert("RGBA")])[0].size == (32, 32)


def test_generate_image_is_seeded_and_batched():
    pipe = fixture_pipeline()
    first = pipe.generate_image("A red panda sitting on a tree.", n=2, seed=0)
    again = pipe.generate_image("A red panda sitting on a tree.", n=2, seed=0)
    assert len(first) == 2 and first[0].size == (32, 32)
    assert [im.tobytes() for im in first] == [im.tobytes() for im in again]


def test_a_seed_per_image_draws_each_image_as_it_comes_alone():
    pipe = fixture_pipeline()
    prompts = ["A red panda sitting on a tree.", "Waves on a beach at night, seen from far away."]
    batch = pipe.generate_image(prompts, n=2, seed=[1, 2, 3, 4])
    alone = [pipe.generate_image(p, seed=s)[0] for p, s in zip([p for p in prompts for _ in range(2)], [1, 2, 3, 4])]
    for a, b in zip(batch, alone):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    videos = pipe.generate_video(prompts, seed=[5, 6])
    second_alone = pipe.generate_video(prompts[1], seed=6)[0]
    assert len(videos) == 2 and np.abs(np.asarray(videos[1][3], int) - np.asarray(second_alone[3], int)).max() <= 1
    for seed, message in (([1, 2], "a list of 4 \\(one per image\\)"), (True, "whole number"), (1.5, "whole number")):
        with pytest.raises(InputError, match=message):
            pipe.generate_image(prompts, n=2, seed=seed)
    with pytest.raises(InputError, match="no prompt given"):
        pipe.generate_image([])


def test_generate_video_returns_eight_frames_per_video():
    pipe = fixture_pipeline()
    videos = pipe.generate_video("Waves on a beach.", n=1, seed=0)
    assert len(videos) == 1 and len(videos[0]) == 8 and videos[0][0].size == (32, 32)


def test_empty_prompt_or_question_is_rejected():
    pipe = fixture_pipeline()
    with pytest.raises(InputError):
        pipe.generate_image("   ")
    with pytest.raises(InputError):
        pipe.describe(_astronaut(), "")


def test_arrays_are_images_and_other_inputs_are_named():
    pipe = fixture_pipeline()
    image = _astronaut()
    as_array = pipe.describe(np.asarray(image), "What is it?", temperature=0, max_new_tokens=4)
    assert as_array == pipe.describe(image, "What is it?", temperature=0, max_new_tokens=4)
    for media, question, message in [
        (None, "What is it?", "expected an image, a video or a non-empty list of frames, got None"),
        ([], "What is it?", "non-empty list of frames"),
        (image, 5, r"questions must be strings, got \['int'\]"),
        (np.zeros((8, 8, 3)), "What is it?", "an image array must be uint8"),
        (b"\x89PNG", "What is it?", "got the bytes of a file: pass its path"),
    ]:
        with pytest.raises(InputError, match=message):
            pipe.describe(media, question)
    with pytest.raises(InputError, match="max_new_tokens must be >= 1"):
        pipe.describe(image, "What is it?", max_new_tokens=0)
    with pytest.raises(InputError, match="max_new_tokens must be a whole number, got 2.5"):
        pipe.describe(image, "What is it?", max_new_tokens=2.5)
    with pytest.raises(InputError, match="top_k must be a whole number, got 1.5"):
        pipe.describe(image, "What is it?", top_k=1.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -1.0}, "temperature must be 0 \\(greedy\\) or a finite number"),
        ({"top_p": 1.5}, r"top_p must be within \[0, 1\]"),
        ({"top_k": -2}, "top_k must be >= 0"),
    ],
)
def test_sampling_settings_out_of_range_are_named(options, message):
    pipe = fixture_pipeline()
    with pytest.raises(InputError, match=message):
        pipe.describe(_astronaut(), "What is it?", **options)
    with pytest.raises(InputError, match=message):
        pipe.generate_image("A red cube.", **options)
    with pytest.raises(InputError, match="cfg must be within \\[0, 10000\\]"):
        pipe.generate_image("A red cube.", cfg=-1.0)


def test_settings_are_checked_before_the_media_are_read(tmp_path):
    pipe = fixture_pipeline()
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match=r"top_p must be within \[0, 1\]"):
        pipe.describe(missing, "What is it?", top_p=1.5)
    with pytest.raises(InputError, match="the question contains <image>"):
        pipe.describe(missing, "What is <image> here?")
    for frames in (0, -1, 2.5):
        with pytest.raises(InputError, match=f"num_frames must be an integer >= 1, got {frames}"):
            pipe.describe(missing, "What is it?", num_frames=frames)
    with pytest.raises(InputError, match="image file not found"):
        pipe.describe(missing, "What is it?")


@pytest.mark.parametrize("text", ["a <image> cat", "a cat <im_start>", "</s> a cat", "<s>", "a <vi_end> cat"])
def test_special_tokens_in_user_text_are_rejected(text):
    pipe = fixture_pipeline()
    token = next(t for t in ["<image>", "<im_start>", "</s>", "<s>", "<vi_end>"] if t in text)
    with pytest.raises(InputError, match=f"the prompt contains {token}"):
        pipe.generate_image(text)
    with pytest.raises(InputError, match=f"the question contains {token}"):
        pipe.describe(_astronaut(), text)
    # Lookalikes are text.
    assert "<" in vicuna.understanding_prompt("Is 3 < 4 and <b> bold?")
    vicuna.check_user_text("Is 3 < 4 and <b> bold?", pipe.tokenizer)


def test_prompt_and_count_types_are_checked():
    pipe = fixture_pipeline()
    with pytest.raises(InputError, match="the prompt must be a string, got int"):
        pipe.generate_image(5)
    with pytest.raises(InputError, match="the prompt must be a string, got NoneType"):
        pipe.generate_video(None)
    for n in (1.5, 0, True):
        with pytest.raises(InputError, match=f"n must be an integer >= 1, got {n}"):
            pipe.generate_image("a cat", n=n)


def test_video_containers_are_found_by_content(tmp_path):
    pipe = fixture_pipeline()
    video = write_video(tmp_path / "clip.mp4", [i * 20 for i in range(10)])
    expected = pipe.describe(video, "What happens?", temperature=0.0, max_new_tokens=3, num_frames=3)
    for name in ("clip.flv", "clip.dat"):  # a listed suffix, and one PIL cannot read that PyAV can
        shutil.copy(video, tmp_path / name)
        assert pipe.describe(tmp_path / name, "What happens?", temperature=0.0, max_new_tokens=3, num_frames=3) == (
            expected
        )


def test_non_image_and_unreadable_video_are_rejected(tmp_path):
    pipe = fixture_pipeline()
    bad_image = tmp_path / "photo.jpg"
    bad_image.write_text("not an image")
    with pytest.raises(InputError, match="not a readable image or video: .*photo.jpg"):
        pipe.describe(bad_image, "What is it?")
    bad_video = tmp_path / "clip.mp4"
    bad_video.write_bytes(b"\x00" * 100)
    with pytest.raises(InputError):
        pipe.describe(bad_video, "What is it?")


def test_save_and_reload_round_trip(tmp_path):
    pipe = fixture_pipeline()
    pipe.save_pretrained(tmp_path / "saved", max_shard_bytes=300_000)
    assert len(list((tmp_path / "saved" / "llm").glob("model-*-of-*.safetensors"))) > 1
    again = VilaUPipeline.from_pretrained(tmp_path / "saved")
    original, reloaded = pipe.model.state_dict(), again.model.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    # The vision tower is written with the release's keys, identical to the fixture's file.
    written = load_file(str(tmp_path / "saved" / "vision_tower" / "model.safetensors"))
    release = load_file(str(FIXTURE / "vision_tower" / "model.safetensors"))
    assert written.keys() == release.keys()
    assert again.text_sampling == pipe.text_sampling


def test_a_saved_folder_has_what_the_official_loader_reads(tmp_path):
    pipe = fixture_pipeline()
    pipe.save_pretrained(tmp_path / "saved")
    llm = tmp_path / "saved" / "llm"
    # The official loader builds the slow SentencePiece tokenizer: it needs tokenizer.model.
    for name in ("tokenizer.model", "special_tokens_map.json", "added_tokens.json"):
        assert (llm / name).read_bytes() == (FIXTURE / "llm" / name).read_bytes()
    # ... and fetches the SigLIP config named by pretrained_model.
    tower = json.loads((tmp_path / "saved" / "vision_tower" / "config.json").read_text())
    assert tower["rqvaesiglip"]["pretrained_model"] == "vilau-parity/vilau-tiny-a-siglip"
    again = VilaUPipeline.from_pretrained(tmp_path / "saved")
    assert again.config.siglip_name == "vilau-parity/vilau-tiny-a-siglip"
    for prompt in (vicuna.understanding_prompt("What is in the image?", 2), vicuna.generation_prompt("A red panda.")):
        assert vicuna.tokenize(prompt, again.tokenizer) == vicuna.tokenize(prompt, pipe.tokenizer)
    ids = list(range(1004))
    assert again.tokenizer.decode(ids) == pipe.tokenizer.decode(ids)
    # Saved again from the reloaded folder (the tokenizer's source is now the saved folder): the files stay.
    again.save_pretrained(tmp_path / "twice")
    assert (tmp_path / "twice" / "llm" / "tokenizer.model").is_file()
    again.save_pretrained(tmp_path / "saved")  # over itself
    assert (llm / "tokenizer.model").read_bytes() == (FIXTURE / "llm" / "tokenizer.model").read_bytes()


def test_tower_key_map_round_trip():
    release = load_file(str(FIXTURE / "vision_tower" / "model.safetensors"))
    mapped = tower_state_from_release(release)
    assert "vision_tower.decoder.mid.attn_1.qkv.weight" in mapped
    assert "vision_tower.siglip.logit_scale" in mapped
    back = tower_state_to_release(fixture_pipeline().model)
    assert all(torch.equal(back[k], release[k]) for k in release)


def test_mismatched_checkpoint_names_the_key(folder):
    path = folder / "mm_projector" / "model.safetensors"
    state = load_file(str(path))
    state["layers.2.weight"] = torch.zeros(8, 64)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"layers\.2\.weight"):
        VilaUPipeline.from_pretrained(folder)


def test_mismatched_llm_shape_is_reported_before_loading(folder):
    path = folder / "llm" / "model.safetensors"
    state = load_file(str(path))
    state["lm_head.weight"] = torch.zeros(1005, 64)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"lm_head\.weight: checkpoint \(1005, 64\)"):
        VilaUPipeline.from_pretrained(folder)


def test_missing_tower_key_is_reported(folder):
    path = folder / "vision_tower" / "model.safetensors"
    state = load_file(str(path))
    del state["rqtransformer.pos_emb_d"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="pos_emb_d"):
        VilaUPipeline.from_pretrained(folder)


@pytest.mark.parametrize("value", [True, None])
def test_im_patch_token_trap_is_caught(folder, value):
    config = json.loads((folder / "config.json").read_text())
    if value is None:
        del config["mm_use_im_patch_token"]
    else:
        config["mm_use_im_patch_token"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mm_use_im_patch_token"):
        VilaUPipeline.from_pretrained(folder)


def test_special_tokens_must_end_the_vocabulary(folder):
    added = json.loads((folder / "llm" / "added_tokens.json").read_text())
    assert added == {"<im_start>": 1000, "<im_end>": 1001, "<vi_start>": 1002, "<vi_end>": 1003}
    config = json.loads((folder / "llm" / "config.json").read_text())
    config["vocab_size"] = 1005  # as if <im_patch> had grown the vocabulary
    (folder / "llm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="the tokenizer has 1004 tokens but the LLM's vocab_size is 1005"):
        VilaUPipeline.from_pretrained(folder)


def test_special_tokens_in_another_order_are_caught(folder):
    swap = {"<im_start>": "<im_end>", "<im_end>": "<im_start>"}
    tokenizer_config = json.loads((folder / "llm" / "tokenizer_config.json").read_text())
    for entry in tokenizer_config["added_tokens_decoder"].values():
        entry["content"] = swap.get(entry["content"], entry["content"])
    (folder / "llm" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    added = {swap.get(k, k): v for k, v in json.loads((folder / "llm" / "added_tokens.json").read_text()).items()}
    (folder / "llm" / "added_tokens.json").write_text(json.dumps(added))
    with pytest.raises(CheckpointError, match="special tokens .* do not sit at vocab_size-4"):
        VilaUPipeline.from_pretrained(folder)


def test_a_missing_tokenizer_model_is_named(folder):
    (folder / "llm" / "tokenizer.model").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer.model"):
        VilaUPipeline.from_pretrained(folder)


@pytest.mark.parametrize("sharded", [False, True])
def test_truncated_llm_weights_name_the_file(folder, sharded):
    path = folder / "llm" / "model.safetensors"
    if sharded:
        state = load_file(str(path))
        keys = sorted(state)
        save_file({k: state[k] for k in keys[::2]}, str(folder / "llm" / "model-00001-of-00002.safetensors"))
        save_file({k: state[k] for k in keys[1::2]}, str(folder / "llm" / "model-00002-of-00002.safetensors"))
        weight_map = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(keys)}
        (folder / "llm" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        path.unlink()
        path = folder / "llm" / "model-00002-of-00002.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"cannot read weights file {path}"):
        VilaUPipeline.from_pretrained(folder)


@pytest.mark.parametrize("eos", [[], None, "2"])
def test_a_generation_config_without_an_eos_id_is_named(eos):
    with pytest.raises(CheckpointError, match="eos_token_id must be a token id or a non-empty list"):
        TextSampling.from_generation_config({"eos_token_id": eos})
    assert TextSampling.from_generation_config({"eos_token_id": [5, 2]}).eos_token_id == 5


def test_not_a_vila_u_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a VILA-U folder"):
        VilaUPipeline.from_pretrained(tmp_path)


def _shard_llm(folder, stray=()):
    """Split ``llm/model.safetensors`` into two shards and an index; ``stray`` keys are also copied, unlisted,
    into the second shard. Returns the original weights."""
    path = folder / "llm" / "model.safetensors"
    state = load_file(str(path))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {k: name for name, names in shards.items() for k in names}
    shards["model-00002-of-00002.safetensors"] += stray
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(folder / "llm" / name))
    (folder / "llm" / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    path.unlink()
    return state


def test_sharded_llm_weights_load(folder):
    state = _shard_llm(folder)
    pipe = VilaUPipeline.from_pretrained(folder)
    assert torch.equal(pipe.model.llm.lm_head.weight, state["lm_head.weight"])


def test_a_key_in_a_shard_the_index_does_not_name_for_it_is_refused(folder):
    # A second copy of a key: which one is right cannot be known, so it is not silently loaded over the first.
    key = sorted(load_file(str(folder / "llm" / "model.safetensors")))[0]
    _shard_llm(folder, stray=[key])
    with pytest.raises(
        CheckpointError, match=f"model-00002-of-00002.safetensors: .*not listed for it: {re.escape(key)}"
    ):
        VilaUPipeline.from_pretrained(folder)


def test_to_casts_the_model_as_loading_in_that_dtype_does():
    pipe = VilaUPipeline.from_pretrained(FIXTURE)
    pipe.progress = False
    assert pipe.to(dtype=torch.bfloat16) is pipe and next(pipe.model.parameters()).dtype == torch.bfloat16
    loaded = VilaUPipeline.from_pretrained(FIXTURE, dtype=torch.bfloat16)
    loaded.progress = False
    options = {"temperature": 0.0, "max_new_tokens": 4}
    answers = [p.describe(_astronaut(), "What is in the image?", **options) for p in (pipe, loaded)]
    assert answers[0] == answers[1]
    assert pipe.to("cpu", torch.float32).device == torch.device("cpu")
    assert pipe.to(torch.bfloat16) is pipe and next(pipe.model.parameters()).dtype == torch.bfloat16  # diffusers'
    assert next(VilaUPipeline.from_pretrained(FIXTURE, torch_dtype=torch.bfloat16).model.parameters()).dtype == (
        torch.bfloat16
    )


def test_set_progress_bar_config_switches_the_visual_token_bar(capsys):
    pipe = VilaUPipeline.from_pretrained(FIXTURE)
    pipe.generate_image("a red panda", seed=0)
    assert "visual tokens" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    pipe.generate_image("a red panda", seed=0)
    assert "visual tokens" not in capsys.readouterr().err


def test_bfloat16_loading_and_inference():
    c = cases()
    pipe = VilaUPipeline.from_pretrained(FIXTURE, dtype=torch.bfloat16)
    pipe.progress = False
    assert {v.dtype for v in pipe.model.state_dict().values()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert isinstance(pipe.describe(_astronaut(), "What is in the image?", temperature=0.0, max_new_tokens=3), str)
    with torch.no_grad():
        decoded = pipe.model.vision_tower.decode(c["vt.z_q"].bfloat16()).float()
    assert (decoded - c["vt.decoded_bf16_official"]).abs().max() < 0.1


def test_generated_pixels_are_the_official_mapping_of_the_decoder_output():
    c = cases()
    model = fixture_pipeline().model
    with torch.no_grad():
        images = to_pil(model.decode_codes(c["e2e.image_ids"][:2]))
    official = c["e2e.image"].permute(0, 2, 3, 1).to(torch.uint8)  # the release's astype(np.uint8)
    ours = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
    assert (ours.int() - official.int()).abs().max() <= 1


def _edit_json(path, keys, value):
    """Set ``keys`` (a path into the JSON object of ``path``) to ``value``; ``...`` deletes the key."""
    data = json.loads(path.read_text())
    node = data
    for key in keys[:-1]:
        node = node[key]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("file", "keys", "value", "message"),
    [
        (
            "vision_tower",
            ("rqvaesiglip", "n_embed"),
            "abc",
            "rqvaesiglip.n_embed must be a whole number >= 1, got 'abc'",
        ),
        ("vision_tower", ("rqvaesiglip", "decay"), "x", "rqvaesiglip.decay must be a number >= 0 and < 1, got 'x'"),
        ("vision_tower", ("rqtransformer", "embed_dim"), "x", "rqtransformer.embed_dim must be a whole number"),
        ("vision_tower", ("rqvaesiglip", "ddconfig", "ch"), "x", "rqvaesiglip.ddconfig.ch must be a whole number"),
        (
            "vision_tower",
            ("rqvaesiglip", "siglip_config", "vision_config", "patch_size"),
            0,
            "siglip vision_config.patch_size must be a whole number >= 1, got 0",
        ),
        (
            "vision_tower",
            ("rqvaesiglip", "siglip_config", "vision_config", "num_hidden_layers"),
            "x",
            "siglip_config: Validation error for field 'num_hidden_layers'",
        ),
        ("vision_tower", ("rqtransformer", "head", "block", "n_head"), 0, "n_head must be a whole number >= 1, got 0"),
        ("vision_tower", ("rqtransformer", "head", "block", "n_head"), 3, "embed_dim 64 is not divisible by n_head 3"),
        ("llm", ("vocab_size",), ..., "vocab_size must be a whole number >= 1, got None"),
        ("llm", ("num_hidden_layers",), "x", "'num_hidden_layers'"),
        ("llm", ("num_attention_heads",), 3, "not a multiple of the number of attention heads"),
        ("llm", ("rope_scaling",), {"type": "foo"}, "rope_scaling type 'foo' is not one transformers knows"),
        ("top", ("num_video_frames",), "x", "num_video_frames must be a whole number >= 1, got 'x'"),
        ("top", ("mm_use_im_patch_token",), "false", "mm_use_im_patch_token must be true or false, got 'false'"),
    ],
)
def test_malformed_config_values_name_the_file_and_key(folder, file, keys, value, message):
    path = folder / "config.json" if file == "top" else folder / file / "config.json"
    _edit_json(path, keys, value)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: ") + ".*" + re.escape(message)):
        VilaUPipeline.from_pretrained(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("temperature", "x", "temperature must be a number, got 'x'"),
        ("top_k", -5, "top_k must be >= 0 (0: no top-k), got -5"),
        ("do_sample", "yes", "do_sample must be true or false, got 'yes'"),
    ],
)
def test_a_malformed_generation_config_is_named_at_load(folder, key, value, message):
    _edit_json(folder / "llm" / "generation_config.json", (key,), value)
    with pytest.raises(CheckpointError, match=re.escape(f"llm/generation_config.json: {message}")):
        VilaUPipeline.from_pretrained(folder)


def test_a_malformed_tokenizer_json_is_named(folder):
    (folder / "llm" / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match=re.escape(f"cannot load the tokenizer in {folder / 'llm'}")):
        VilaUPipeline.from_pretrained(folder)


def test_a_corrupt_top_config_is_named_as_such(folder):
    (folder / "config.json").write_text("{garbage")
    assert not is_vila_u_folder(folder)
    with pytest.raises(CheckpointError, match=re.escape(f"cannot parse {folder / 'config.json'}")):
        VilaUPipeline.from_pretrained(folder)


def test_save_pretrained_over_a_folder_is_atomic_and_keeps_other_entries(folder, monkeypatch):
    (folder / "README.md").write_text("notes")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    written = []

    def crash_after_one(state, path, metadata=None):  # the LLM's weights are written first
        if written:
            raise RuntimeError("disk full")
        written.append(path)
        save_state_dict(state, path, metadata)

    monkeypatch.setattr(vila_u_checkpoint, "save_state_dict", crash_after_one)
    with pytest.raises(RuntimeError, match="disk full"):
        fixture_pipeline().save_pretrained(folder)
    # the previous folder, untouched, and nothing half-written beside it
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    monkeypatch.undo()
    fixture_pipeline().save_pretrained(folder, max_shard_bytes=300_000)
    assert (folder / "README.md").read_text() == "notes"
    assert not (folder / "llm" / "model.safetensors").exists()  # replaced by shards, not left stale beside them
    assert VilaUPipeline.from_pretrained(folder).text_sampling == fixture_pipeline().text_sampling


def test_seeds_torch_cannot_take_are_named():
    pipe = fixture_pipeline()
    message = re.escape(f"seed must be a whole number in [0, 2**63), got {2**70}")
    with pytest.raises(InputError, match=message):
        pipe.generate_image("a cat", seed=2**70)
    with pytest.raises(InputError, match=message):
        pipe.generate_image("a cat", seed=[2**70])
    with pytest.raises(InputError, match=message):
        pipe.describe(_astronaut(), "Describe it.", seed=2**70)
    with pytest.raises(InputError, match=re.escape("seed must be a whole number in [0, 2**63), got 'abc'")):
        pipe.generate_image("a cat", seed="abc")


def test_reconstruct_and_from_pretrained_arguments_of_the_wrong_type_are_named():
    pipe = fixture_pipeline()
    for images in ([], 5, b"abc"):
        with pytest.raises(InputError, match="reconstruct takes an image or a non-empty list of images"):
            pipe.reconstruct(images)
    with pytest.raises(InputError, match="the model folder must be a path, got NoneType"):
        VilaUPipeline.from_pretrained(None)
    with pytest.raises(InputError, match="torch_dtype must be a floating-point torch dtype"):
        VilaUPipeline.from_pretrained(FIXTURE, torch_dtype="float16")
    with pytest.raises(InputError, match="dtype must be a floating-point torch dtype"):
        VilaUPipeline.from_pretrained(FIXTURE, dtype=torch.int64)
    with pytest.raises(InputError, match="unknown device 'bogus'"):
        VilaUPipeline.from_pretrained(FIXTURE, device="bogus")
