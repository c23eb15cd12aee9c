"""CPU time of one 256 px HART image from a tiny random model (transformer ~7.7M params, tokenizer
~4.6M, cfg 4.5), with the residual diffusion and, as the baseline in the same run, without it
(discrete-only): the paper reports that the residual diffusion adds about 10% latency.
Not part of the test suite.

    PYTHONPATH=src python benchmarks/hart_tiny_cpu.py [--threads N] [--runs K]
"""

from __future__ import annotations

import argparse
import statistics
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
    config = HartConfig(
        embed_dim=256,
        depth=4,
        num_heads=4,
        context_token=32,
        context_dim=64,
        patch_nums=PATCH_NUMS[256],
        diff_width=256,
        diff_depth=3,
    )
    pipe = HartPipeline(HartTransformer(config), tokenizer)
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[:, :10] = True
    embeds = TextEncoding(torch.randn(1, 32, 64), mask, mask.long().cumsum(1) - 1)
    pipe(prompt_embeds=embeds, seed=0, progress=False)  # warm-up
    medians = {}
    for name, discrete_only in (("discrete-only (baseline)", True), ("hybrid (with residual diffusion)", False)):
        walls = []
        for run in range(args.runs):
            cpu, wall = time.process_time(), time.perf_counter()
            pipe(prompt_embeds=embeds, seed=run, progress=False, discrete_only=discrete_only)
            walls.append(time.perf_counter() - wall)
            print(f"{name} run {run}: cpu {time.process_time() - cpu:.2f} s, wall {walls[-1]:.2f} s")
        medians[name] = statistics.median(walls)
    base, full = medians.values()
    overhead = 100 * (full / base - 1)
    print(f"median wall: baseline {base:.2f} s, hybrid {full:.2f} s, residual diffusion adds {overhead:.0f}%")


if __name__ == "__main__":
    main()
