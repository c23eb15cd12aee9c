"""Load time of a VILA-U folder with and without random initialisation of the model before its weights are read,
in the same run (the pipeline builds with ``VilaU.empty``; ``VilaU(config)`` initialises every weight first).

    PYTHONPATH=src python benchmarks/vila_u_load.py [--layers 2] [--threads N]

The model: a LLaMA of the 7B's width (hidden 4096, MLP 11008, vocabulary 32004) with ``--layers`` layers
(2: 667 M values) and the parity fixture's tiny vision tower, stored in bfloat16 as the release is.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from arvision.models.vila_u import VilaU, VilaUConfig
from arvision.pipelines import vila_u_checkpoint as ckpt

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vilau-tiny-a"


def _config(layers: int) -> VilaUConfig:
    base, _ = ckpt.read_config(FIXTURE)
    llm = {
        **base.llm,
        "vocab_size": 32004,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "num_hidden_layers": layers,
    }
    return dataclasses.replace(base, llm=llm, depth=dataclasses.replace(base.depth, llm_dim=4096))


def _load(folder: Path, config: VilaUConfig, build: Callable[[VilaUConfig], VilaU]) -> tuple[float, float]:
    """(seconds to build, seconds to build and load) in bfloat16."""
    start = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = build(config)
    finally:
        torch.set_default_dtype(torch.float32)
    built = time.perf_counter()
    ckpt.load_weights(model, folder)
    return built - start, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = _config(args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vila-u"
        source = VilaU.empty(config).to(torch.bfloat16)
        with torch.no_grad():
            for value in source.state_dict().values():
                value.zero_()  # the values do not matter for timing; empty memory may hold NaNs
        count = sum(p.numel() for p in source.parameters())
        ckpt.save_folder(source, folder, ckpt.load_tokenizer(FIXTURE / "llm", 1004), {})
        del source
        builders = {"random init, then load (before)": VilaU, "VilaU.empty, then load (after)": VilaU.empty}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in builders}
        for _ in range(args.repeats):  # interleaved, so that both see the same page cache and machine load
            for name, build in builders.items():
                times[name].append(_load(folder, config, build))
    print(f"{count / 1e6:.0f} M values, {args.layers} LLM layers, bfloat16, {args.threads} threads")
    for name, runs in times.items():
        build = statistics.median(b for b, _ in runs)
        total = statistics.median(t for _, t in runs)
        print(f"{name:34s} build {build:6.2f} s   build + load {total:6.2f} s")


if __name__ == "__main__":
    main()
