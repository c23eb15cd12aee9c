"""Colour/shape question accuracy of a VILA-U folder on procedural-world scenes (held-out and seen pairs).

python scripts/eval_vila_u_world.py --model src/arvision/defaults/vila-u [--scenes 50] [--tower-scenes 200]
    [--probe-steps 1500 [--probe-scenes 4000] [--probe-unnamed 8000] [--probe-centred]]

``--tower-scenes N`` also reports what the vision tower's codes keep: N single-object scenes per split go
through the tower (encode to codes, decode) and colour and shape are read back from the reconstructions
by arvision.eval.shapes. ``--probe-steps N`` reports what can be read from the features the LLM gets (the
tower's z_q): an attention probe (arvision.eval.feature_probe) trained N steps on ``--probe-scenes``
train-split scenes, next to the same probe trained on the images' own pixels (patches of the tower's patch
size), the baseline that says how much of what is readable the tower keeps. ``--probe-unnamed N`` adds N
train scenes whose object is in an unnamed colour (shape supervision with no colour to tie it to);
``--probe-centred`` also probes the tower's tokens with each image's mean token subtracted.

The same as ``arvision eval vila-u-world ...`` (this script forwards its arguments there).
"""

import sys

from arvision.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "vila-u-world", *sys.argv[1:]]))
