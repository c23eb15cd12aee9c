import pytest

from arvision.data.prompt_files import image_names, read_prompts
from arvision.errors import InputError


def test_prompts_are_the_stripped_non_blank_lines_numbered_without_the_blanks(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("  a red cube \n\n\t\na blue ball\r\nlast line without an end")
    assert read_prompts(path) == ["a red cube", "a blue ball", "last line without an end"]


def test_a_missing_empty_or_non_utf8_prompts_file_is_named(tmp_path):
    with pytest.raises(InputError, match="prompts file not found"):
        read_prompts(tmp_path / "missing.txt")
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
