from arvision.cli.reconstruct import SAMPLE_PHOTO
from arvision.defaults import default_model_path
from arvision.eval.reconstruction import reconstruction_metrics
from arvision.imaging import load_image, pil_to_tensor, resize_center_crop
from arvision.tokenizers import HybridTokenizer


def test_embedded_tokenizer_loads_and_hybrid_beats_discrete_on_the_bundled_photo():
    tokenizer = HybridTokenizer.from_pretrained(default_model_path("tokenizer"))
    image = pil_to_tensor(resize_center_crop(load_image(SAMPLE_PHOTO), 256))
    metrics = reconstruction_metrics(tokenizer, image)
    assert metrics["hybrid_psnr"] > metrics["discrete_psnr"] + 0.5
    assert metrics["hybrid_ssim"] > metrics["discrete_ssim"]
