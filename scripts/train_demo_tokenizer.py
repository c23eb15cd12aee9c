"""Train the small embedded hybrid tokenizer on scikit-image's bundled photos and measure the paper's
central claim at small scale: hybrid (discrete + continuous residual) reconstructions beat discrete-only.

    python scripts/train_demo_tokenizer.py --minutes 10 --out src/arvision/defaults/tokenizer

The astronaut photo is held out of training and used for the evaluation (256x256, PSNR/SSIM).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data
from tqdm import tqdm

from arvision.eval.metrics import psnr, ssim
from arvision.imaging import pil_to_tensor, resize_center_crop
from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig
from arvision.tokenizers.schedules import schedule_for_latent
from arvision.training.tokenizer import TokenizerLossConfig, TokenizerTrainer

TRAIN_IMAGES = (
    "camera brick chelsea clock coffee coins colorwheel grass gravel hubble_deep_field immunohistochemistry "
    "logo moon page retina rocket text cell"
).split()


def load_training_photos() -> list[Image.Image]:
    photos = []
    for name in TRAIN_IMAGES:
        array = getattr(data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        array = array[..., :3]
        if array.dtype != np.uint8:
            array = (255 * (array.astype(np.float64) / max(array.max(), 1))).astype(np.uint8)
        photos.append(Image.fromarray(array))
    return photos


def random_crop(photo: Image.Image, size: int, rng: random.Random) -> Image.Image:
    scale = rng.uniform(size / min(photo.size), 1.0) if min(photo.size) > size else size / min(photo.size)
    w, h = max(size, round(photo.width * scale)), max(size, round(photo.height * scale))
    photo = photo.resize((w, h), Image.BICUBIC)
    left, top = rng.randint(0, w - size), rng.randint(0, h - size)
    crop = photo.crop((left, top, left + size, top + size))
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


@torch.no_grad()
def evaluate(tokenizer: HybridTokenizer, size: int = 256) -> dict[str, float]:
    image = pil_to_tensor(resize_center_crop(Image.fromarray(data.astronaut()), size))
    tokenizer.eval()
    results = {}
    for mode in ("hybrid", "discrete"):
        recon = tokenizer.reconstruct(image, mode=mode)
        results[f"{mode}_psnr"] = psnr(recon, image).item()
        results[f"{mode}_ssim"] = ssim(recon, image).item()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    config = HybridTokenizerConfig(
        vocab_size=1024, z_channels=16, ch=16, ch_mult=(1, 2, 2, 4, 4), v_patch_nums=schedule_for_latent(args.crop // 16)
    )
    tokenizer = HybridTokenizer(config)
    trainer = TokenizerTrainer(
        tokenizer, TokenizerLossConfig(mode="full"), lr=args.lr, generator=torch.Generator().manual_seed(args.seed)
    )
    photos = load_training_photos()
    start, deadline = time.time(), time.time() + 60 * args.minutes
    bar = tqdm(desc="tokenizer", unit="step")
    logs: dict[str, float] = {}
    while time.time() < deadline:
        batch = pil_to_tensor([random_crop(rng.choice(photos), args.crop, rng) for _ in range(args.batch)])
        logs = trainer.step(batch)
        bar.update()
        bar.set_postfix(loss=f"{logs['loss']:.4f}", usage=f"{logs['codebook_usage']:.2f}")
    bar.close()
    metrics = {
        "steps": trainer.step_count,
        "minutes": (time.time() - start) / 60,
        "final_loss": logs.get("loss"),
        "codebook_usage": logs.get("codebook_usage"),
        **evaluate(tokenizer),
    }
    tokenizer.save_pretrained(args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
