"""Shape-and-colour accuracy of a HART pipeline on single-object world prompts (held-out and seen pairs).

python scripts/eval_hart_world.py --model src/arvision/defaults/hart [--size 64] [--grid grid.png]
    [--cfg 3] [--top-k 20] [--guidance-schedule constant]   (sampling; default: the model folder's)
    [--first-seed 2]   (seeds 2, 3 instead of 0, 1)
    [--caption-use 64]   (also: per-scale cross-entropy of 64 real scenes with right / shuffled / no captions)
    [--images-per-prompt 0]   (skips the generation accuracy)

The same as ``arvision eval hart-world ...`` (this script forwards its arguments there).
"""

import sys

from arvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "hart-world", *sys.argv[1:]]))
