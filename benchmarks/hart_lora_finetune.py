"""Fine-tuning the embedded default HART on the CPU: full fine-tuning (the baseline) against LoRA adapters
of a few ranks, in the same run. Prints, per setting, the trainable parameters, the optimizer state they
need (AdamW keeps two float32 moments per trainable value), the seconds per training step and the peak
resident memory of the process (each setting runs in a process of its own). Not part of the test suite.
At 12M parameters the optimizer state is small beside the activations and the text encoder, so LoRA saves
optimizer state and a little time here, not memory (importing peft alone adds about 170 MiB); the memory
case for LoRA is the large models, where the weights' gradients and AdamW moments dominate.

    python benchmarks/hart_lora_finetune.py [--threads 2] [--steps 4] [--batch 8] [--ranks 4 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from arvision.defaults import default_model_path
from arvision.training.tasks import build_task


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(rank: int, steps: int, batch: int) -> dict:
    folder = default_model_path("hart")
    model = {"init_from": str(folder), "tokenizer": str(folder / "tokenizer"), "context_tokens": 24}
    model["transformer"] = {"embed_dim": 256, "depth": 8, "num_heads": 8, "diff_width": 256, "diff_depth": 3}
    if rank:
        model["lora"] = {"rank": rank, "alpha": 2 * rank}
    task = build_task("hart", model, {"resolution": 64, "max_objects": 2, "length": batch * (steps + 1)})
    torch.manual_seed(0)
    objective = task.build_model()
    trainable = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    dataset = task.build_dataset()
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):  # the first step warms up and is not timed
        batch_items = task.collate([dataset[step * batch + i] for i in range(batch)])
        began = time.perf_counter()
        loss, _ = task.loss(objective, batch_items, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - began)
    values = sum(p.numel() for p in trainable)
    return {
        "setting": f"LoRA rank {rank}" if rank else "full fine-tuning",
        "trainable": values,
        "optimizer_mib": 2 * 4 * values / 2**20,
        "step_s": statistics.median(times),
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # one setting, as JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(measure(args.one, args.steps, args.batch)))
        return
    rows = []
    for rank in [0, *args.ranks]:  # a process each, so that each peak memory is its own
        command = [sys.executable, __file__, "--one", str(rank), "--threads", str(args.threads)]
        command += ["--steps", str(args.steps), "--batch", str(args.batch)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]
    print(f"default HART, batch {args.batch}, {args.threads} threads, median of {args.steps} steps")
    for row in rows:
        print(
            f"{row['setting']:>18}: {row['trainable']:>10,} trainable ({row['trainable'] / base['trainable']:6.1%}), "
            f"optimizer state {row['optimizer_mib']:6.1f} MiB, {row['step_s']:.2f} s/step "
            f"({row['step_s'] / base['step_s']:.2f}x), peak RSS {row['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
