import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from arvision.data.render import render_scene
from arvision.data.scenes import COLOURS, SHAPES
from arvision.data.world import single_object_prompts
from arvision.defaults import default_model_path
from arvision.eval.reconstruction import readback_by_scales, reconstruction_metrics
from arvision.eval.shapes import single_object_targets
from arvision.tokenizers.hart_tokenizer import HybridTokenizer

SCRIPTS = Path(__file__).parents[1] / "scripts"


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


class MetaDeviceTokenizer(torch.nn.Module):
    """Stands in for a tokenizer on an accelerator: its weights are on the meta device, it insists on inputs
    there too, and it hands back grey CPU images."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device="meta"))

    def grey(self, images: torch.Tensor) -> torch.Tensor:
        assert images.device.type == "meta", f"images left on {images.device}"
        return torch.zeros(images.shape)

    def reconstruct(self, images: torch.Tensor, mode: str) -> torch.Tensor:
        return self.grey(images)

    def encode(self, images: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(patch_nums=(1, 2), latent=self.grey(images))

    def decode_first_scales(self, encoded: SimpleNamespace, scales: int) -> torch.Tensor:
        return encoded.latent

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return latent


def test_images_go_to_the_tokenizers_device():
    images = torch.zeros(2, 3, 16, 16)
    metrics = reconstruction_metrics(MetaDeviceTokenizer(), images)
    assert metrics["hybrid_psnr"] == float("inf") and metrics["discrete_ssim"] == pytest.approx(1.0)
    pictures = [Image.new("RGB", (16, 16), (128, 128, 128))] * 2
    report = readback_by_scales(MetaDeviceTokenizer(), pictures, [("red", "circle")] * 2)
    assert list(report) == ["scales_1", "scales_2", "hybrid"] and report["hybrid"]["both"] == 0.0


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "eval_tokenizer.py"), *args], capture_output=True, text=True)


def test_eval_tokenizer_names_bad_arguments_without_a_traceback(tmp_path):
    counted = run_script("--model", str(tmp_path), "--world-images", "0")
    assert counted.returncode == 2 and "argument --world-images: must be >= 1, got 0" in counted.stderr
    missing = run_script("--model", str(tmp_path / "nonexist"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("arvision eval: error: ") and "nonexist" in line
