"""Hybrid vs discrete-only reconstruction of a tokenizer on the held-out astronaut photo and on
procedural-world images (the paper's central tokenizer claim, at small scale).

    python scripts/eval_tokenizer.py --model src/arvision/defaults/tokenizer
    python scripts/eval_tokenizer.py --model src/arvision/defaults/hart/tokenizer --size 64 --scale-readback

``--scale-readback`` adds which scales carry an object: the single-object prompts' reference scenes of
every colour-shape pair, decoded from the codes of the first K scales, read back for colour and shape.

The same as ``arvision eval tokenizer ...`` (this script forwards its arguments there).
"""

import sys

from arvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "tokenizer", *sys.argv[1:]]))
