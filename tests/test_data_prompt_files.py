import pytest

from arvision.data.prompt_files import image_names, paired_images, read_prompts
from arvision.errors import InputError


def test_prompts_are_the_stripped_non_blank_lines_numbered_without_the_blanks(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("  a red cube \n\n\t\na blue ball\r\nlast line without an end")
    assert read_prompts(path) == ["a red cube", "a blue ball", "last line without an end"]


def test_a_missing_empty_or_non_utf8_prompts_file_is_named(tmp_path):
    with pytest.raises(InputError, match="prompts file not found"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(InputError, match=f"{tmp_path} is a folder, not a prompts file"):
        read_prompts(tmp_path)
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(InputError, match="no prompts in"):
        read_prompts(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("a caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt:1: not UTF-8"):
        read_prompts(tmp_path / "latin1.txt")


def test_image_names_number_prompts_and_their_images():
    assert image_names(7, 1) == ["00007.png"]
    assert image_names(12, 3) == ["00012_0.png", "00012_1.png", "00012_2.png"]
    assert image_names(123456, 1) == ["123456.png"]


def test_paired_images_give_each_image_of_a_prompt_set_folder_its_prompt(tmp_path):
    prompts = ["a cat", "a dog", "a bird"]
    for name in [*image_names(0, 2), *image_names(2, 2), "cover.png", "00001.txt"]:
        (tmp_path / name).write_bytes(b"")
    pairs = paired_images(tmp_path, prompts)
    assert [(path.name, prompt) for path, prompt in pairs] == [
        ("00000_0.png", "a cat"),
        ("00000_1.png", "a cat"),
        ("00002_0.png", "a bird"),
        ("00002_1.png", "a bird"),
    ]
    with pytest.raises(InputError, match="00002_0.png is an image of prompt 2, but the prompts file has 2"):
        paired_images(tmp_path, prompts[:2])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no prompt-set images"):
        paired_images(tmp_path / "empty", prompts)
    with pytest.raises(InputError, match="image folder not found"):
        paired_images(tmp_path / "missing", prompts)


def test_paired_images_come_in_numeric_order_past_five_digits(tmp_path):
    prompts = [f"prompt {i}" for i in range(100_001)]
    names = [*image_names(100_000, 1), *image_names(99_999, 1), *image_names(7, 11)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    order = [path.name for path, _ in paired_images(tmp_path, prompts)]
    assert order == [*(f"00007_{k}.png" for k in range(11)), "99999.png", "100000.png"]  # 00007_10 after 00007_9
    assert paired_images(tmp_path, prompts)[-1][1] == "prompt 100000"
