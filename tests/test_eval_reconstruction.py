import pytest

from arvision.data.render import render_scene
from arvision.data.scenes import COLOURS, SHAPES
from arvision.data.world import single_object_prompts
from arvision.defaults import default_model_path
from arvision.eval.reconstruction import readback_by_scales
from arvision.eval.shapes import single_object_targets
from arvision.tokenizers.hart_tokenizer import HybridTokenizer


@pytest.fixture(scope="module")
def default_hart_tokenizer() -> HybridTokenizer:
    return HybridTokenizer.from_pretrained(default_model_path("hart") / "tokenizer").eval()


def test_shape_needs_the_fine_scales_of_the_default_tokenizer(default_hart_tokenizer):
    cases = single_object_prompts([(colour, shape) for colour in list(COLOURS)[:4] for shape in SHAPES])[::3]
    images = [render_scene(case.graph, 64) for case in cases]
    targets = single_object_targets(case.graph for case in cases)
    report = readback_by_scales(default_hart_tokenizer, images, targets)
    assert list(report) == [f"scales_{k}" for k in range(1, 11)] + ["hybrid"]
    assert report["hybrid"]["colour"] == 1.0 and report["hybrid"]["shape"] >= 0.8
    # the coarse scales hold a blob at most: the shape is drawn by the last ones
    assert report["scales_1"]["shape"] < report["hybrid"]["shape"] - 0.3
