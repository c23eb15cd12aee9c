"""CPU time of one 256 px HART image from a tiny random model (transformer ~7.7M params, tokenizer
~4.6M, cfg 4.5 with the residual diffusion). Not part of the test suite.

    PYTHONPATH=src python benchmarks/hart_tiny_cpu.py [--threads N] [--runs K]
"""

from __future__ import annotations

import argparse
import time

import torch

from arvision.models.hart import HartConfig, HartTransformer
from arvision.pipelines.hart import HartPipeline
from arvision.text.base import TextEncoding
from arvision.tokenizers.hart_tokenizer import HybridTokenizer, HybridTokenizerConfig
from arvision.tokenizers.schedules import PATCH_NUMS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = HybridTokenizer(
        HybridTokenizerConfig(ch=32, ch_mult=(1, 1, 2, 2, 4), v_patch_nums=PATCH_NUMS[256], norm_groups=8)
    )
    config = HartConfig(embed_dim=256, depth=4, num_heads=4, context_token=32, context_dim=64,
                        patch_nums=PATCH_NUMS[256], diff_width=256, diff_depth=3)
    pipe = HartPipeline(HartTransformer(config), tokenizer)
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[:, :10] = True
    embeds = TextEncoding(torch.randn(1, 32, 64), mask, mask.long().cumsum(1) - 1)
    pipe(prompt_embeds=embeds, seed=0, progress=False)  # warm-up
    for run in range(args.runs):
        cpu, wall = time.process_time(), time.perf_counter()
        pipe(prompt_embeds=embeds, seed=run, progress=False)
        print(f"run {run}: cpu {time.process_time() - cpu:.2f} s, wall {time.perf_counter() - wall:.2f} s")


if __name__ == "__main__":
    main()
