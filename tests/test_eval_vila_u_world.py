import subprocess
import sys
from pathlib import Path

import pytest

from arvision.data.world import WorldConfig
from arvision.errors import InputError
from arvision.eval.vila_u_world import colour_shape_cases, first_word, world_vqa_accuracy


def test_cases_are_colour_and_shape_questions_with_graph_answers():
    cases = colour_shape_cases("heldout", scenes=6, image_size=32)
    assert cases and all(c.question.startswith(("What color", "What shape")) for c in cases)
    assert all(c.image.size == (32, 32) for c in cases)
    assert not any("background" in c.question for c in cases)
    with pytest.raises(InputError):
        colour_shape_cases("val", scenes=0, image_size=32)


def test_held_out_figures_count_only_questions_about_held_out_pairs():
    # The first two held-out scenes: a red triangle (held out) beside a yellow triangle (seen), a cyan square
    # (held out) beside a seen pair; three questions about each kind of pair.
    held_out_pairs = set(WorldConfig().heldout_combos)
    cases = colour_shape_cases("heldout", scenes=2, image_size=32)
    assert len(cases) == 6 and sum(c.pair in held_out_pairs for c in cases) == 3
    assert all(c.pair[0 if c.question.startswith("What color") else 1] == c.answer for c in cases)

    def right_about(held_out: bool):
        """An answerer right exactly on the questions about held-out pairs (or exactly on the others)."""
        answers = {(c.image.tobytes(), c.question): c.answer for c in cases if (c.pair in held_out_pairs) == held_out}
        return lambda images, questions: [answers.get((im.tobytes(), q), "") for im, q in zip(images, questions)]

    report = world_vqa_accuracy(right_about(held_out=True), image_size=32, scenes=2)
    held_out = report["held_out"]
    assert held_out["accuracy"] == 1.0 and held_out["questions"] == 3
    assert held_out["about_seen_pairs"]["accuracy"] == 0.0 and held_out["about_seen_pairs"]["questions"] == 3
    # val scenes never show a held-out pair: all their questions count, none is set apart
    assert report["seen"]["questions"] == len(colour_shape_cases("val", scenes=2, image_size=32))
    assert "about_held_out_pairs" not in report["seen"]
    flipped = world_vqa_accuracy(right_about(held_out=False), image_size=32, scenes=2)["held_out"]
    assert flipped["accuracy"] == 0.0 and flipped["about_seen_pairs"]["accuracy"] == 1.0


def test_first_word_ignores_case_and_punctuation():
    assert first_word("  Red. It is red") == "red" and first_word("") == ""


def test_an_oracle_scores_one_and_a_constant_answer_scores_its_share():
    oracle_answers = {}
    for split in ("heldout", "val"):
        for case in colour_shape_cases(split, scenes=8, image_size=32):
            oracle_answers[(case.image.tobytes(), case.question)] = case.answer

    def oracle(images, questions):
        return [oracle_answers[(im.tobytes(), q)].upper() + "." for im, q in zip(images, questions)]

    report = world_vqa_accuracy(oracle, image_size=32, scenes=8)
    assert report["held_out"]["accuracy"] == 1.0 and report["seen"]["accuracy"] == 1.0
    constant = world_vqa_accuracy(lambda images, qs: ["red"] * len(qs), image_size=32, scenes=8)
    seen = [c.answer for c in colour_shape_cases("val", scenes=8, image_size=32)]
    assert constant["seen"]["accuracy"] == pytest.approx(seen.count("red") / len(seen))
    low, high = constant["seen"]["interval_95"]
    assert low <= constant["seen"]["accuracy"] < high  # even a rate of 0 leaves room above it
    colours = [
        c.answer for c in colour_shape_cases("val", scenes=8, image_size=32) if c.question.startswith("What color")
    ]
    assert constant["seen"]["colour"] == {
        "accuracy": pytest.approx(colours.count("red") / len(colours)),
        "questions": len(colours),
    }
    assert constant["seen"]["shape"]["accuracy"] == 0.0
    assert (
        report["held_out"]["colour"]["questions"] + report["held_out"]["shape"]["questions"]
        == report["held_out"]["questions"]
    )
    with pytest.raises(InputError, match="answers"):
        world_vqa_accuracy(lambda images, qs: [], image_size=32, scenes=2)


def test_eval_script_names_bad_arguments_without_a_traceback(tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "eval_vila_u_world.py"
    zero = subprocess.run(
        [sys.executable, str(script), "--model", str(tmp_path), "--scenes", "0"], capture_output=True, text=True
    )
    assert zero.returncode == 2 and "argument --scenes: must be >= 1, got 0" in zero.stderr
    missing = subprocess.run([sys.executable, str(script), "--model", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    (line,) = missing.stderr.strip().splitlines()
    assert line.startswith("arvision eval: error: ") and "not a VILA-U folder" in line
