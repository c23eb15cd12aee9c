from arvision.text import vicuna
from vilau_common import cases, fixture_pipeline

SYSTEM = vicuna.SYSTEM_PROMPT


def test_understanding_prompt_layout():
    assert vicuna.understanding_prompt("What is in the image?") == (
        f"{SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT:"
    )
    # Only the whole message is stripped, as in the release: the question keeps its leading space.
    video = vicuna.understanding_prompt(" Why? ", num_images=8)
    assert video == f"{SYSTEM} USER: " + "<image>\n" * 8 + " Why? ASSISTANT:"
    assert "<im_start>" not in video and "<vi_start>" not in video


def test_generation_prompts_and_the_empty_unconditional_prompt():
    assert vicuna.generation_prompt("A cat.") == f"{SYSTEM} USER: A cat. ASSISTANT: <im_start>"
    assert vicuna.generation_prompt("A cat.", video=True) == f"{SYSTEM} USER: A cat. ASSISTANT: <vi_start>"
    assert vicuna.generation_prompt(" ") == f"{SYSTEM} USER:ASSISTANT: <im_start>"


def test_multi_turn_separators():
    assert vicuna.render(["hi", "hello", "bye", None]) == f"{SYSTEM} USER: hi ASSISTANT: hello</s>USER: bye ASSISTANT:"


def test_tokenization_matches_the_official_ids():
    c = cases()
    tokenizer = fixture_pipeline().tokenizer
    ids = vicuna.tokenize(vicuna.understanding_prompt("What is in the image?"), tokenizer)
    assert ids == c["und.input_ids"][0].tolist()
    assert ids.index(vicuna.IMAGE_TOKEN_INDEX) == 82
    cond = vicuna.tokenize(vicuna.generation_prompt("A red panda sitting on a tree."), tokenizer)
    uncond = vicuna.tokenize(vicuna.generation_prompt(""), tokenizer)
    assert cond == c["gen.input_ids"][0].tolist()
    assert uncond == c["gen.input_ids"][2, -len(uncond) :].tolist()
    assert cond[-1] == uncond[-1] == 1000  # <im_start> = V - 4
