import pytest

from arvision.errors import InputError
from arvision.eval.vila_u_world import colour_shape_cases, first_word, world_vqa_accuracy


def test_cases_are_colour_and_shape_questions_with_graph_answers():
    cases = colour_shape_cases("heldout", scenes=6, image_size=32)
    assert cases and all(c.question.startswith(("What color", "What shape")) for c in cases)
    assert all(c.image.size == (32, 32) for c in cases)
    assert not any("background" in c.question for c in cases)
    with pytest.raises(InputError):
        colour_shape_cases("val", scenes=0, image_size=32)


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
