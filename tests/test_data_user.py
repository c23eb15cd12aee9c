import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arvision.data import CaptionedImages, ClassFolderImages, DataWarning, ImageFiles, VQADataset, prepare_image
from arvision.data.media import sample_frame_indices
from arvision.errors import InputError
from media_common import write_video
from test_imaging import bomb_png


def flat(path, colour, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def red_of(image: torch.Tensor) -> int:
    return round((image[0].mean().item() + 1) * 127.5)


def test_caption_folder_skips_corrupt_and_uncaptioned_files_with_counted_warnings(tmp_path):
    for name, value in (("a", 10), ("b", 20), ("d", 40)):
        flat(tmp_path / f"{name}.png", (value, 0, 0))
        (tmp_path / f"{name}.txt").write_text(f"caption {name}\n")
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt, but captioned
    (tmp_path / "c.txt").write_text("caption c")
    flat(tmp_path / "sub" / "e.jpg", (50, 0, 0))  # nested, no caption file
    (tmp_path / "notes.md").write_text("not an image")
    with pytest.warns(DataWarning, match="e.txt"):
        data = CaptionedImages.from_source(tmp_path, size=8)
    assert data.skipped == 1 and len(data) == 4
    assert [r.path.name for r in data.records] == ["a.png", "b.png", "c.png", "d.png"]
    with pytest.warns(DataWarning, match="c.png") as caught:
        items = [data[i] for i in range(len(data))]
    assert len(caught) == 1 and data.skipped == 2
    # The corrupt item is replaced by the next readable one, the same way every time.
    assert [it["caption"] for it in items] == ["caption a", "caption b", "caption d", "caption d"]
    assert [red_of(it["image"]) for it in items] == [10, 20, 40, 40]
    assert items[0]["image"].shape == (3, 8, 8)


def test_decompression_bombs_are_skipped_and_counted(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    bomb_png(tmp_path / "b.png")
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text(f"caption {name}")
    data = CaptionedImages.from_source(tmp_path, size=8)
    with pytest.warns(DataWarning, match="b.png"):
        item = data[1]
    assert item["caption"] == "caption a" and data.skipped == 1


def test_a_caption_file_that_is_not_utf8_is_skipped_with_a_counted_warning(tmp_path):
    for name, value in (("a", 10), ("b", 20)):
        flat(tmp_path / f"{name}.png", (value, 0, 0))
    (tmp_path / "a.txt").write_text("caption a")
    (tmp_path / "b.txt").write_bytes("café".encode("latin-1"))
    with pytest.warns(DataWarning, match="b.txt: not UTF-8"):
        data = CaptionedImages.from_source(tmp_path, size=8)
    assert data.skipped == 1 and [r.caption for r in data.records] == ["caption a"]


@pytest.mark.parametrize(
    ("name", "head"), [("list.jsonl", '{"image": "a.png", "caption": "ok"}\n'), ("list.csv", "image,caption\n")]
)
def test_a_listing_that_is_not_utf8_names_its_file_and_line(tmp_path, name, head):
    flat(tmp_path / "a.png", (10, 0, 0))
    bad = '{"image": "a.png", "caption": "café"}' if name.endswith("jsonl") else "a.png,café"
    (tmp_path / name).write_bytes(head.encode() + bad.encode("latin-1") + b"\n")
    with pytest.raises(InputError, match=f"{name}:2: not UTF-8"):
        CaptionedImages.from_source(tmp_path / name, size=8)
    if name.endswith("jsonl"):
        with pytest.raises(InputError, match=f"{name}:2: not UTF-8"):
            VQADataset(tmp_path / name, size=8)


def test_jsonl_and_csv_listings_resolve_relative_paths_and_skip_bad_rows(tmp_path):
    flat(tmp_path / "imgs" / "x.png", (100, 0, 0))
    flat(tmp_path / "imgs" / "y.png", (200, 0, 0))
    lines = [
        json.dumps({"image": "imgs/x.png", "caption": "an x"}),
        "{not json",
        json.dumps({"file_name": str(tmp_path / "imgs" / "y.png"), "text": "a y"}),
        json.dumps({"image": "imgs/x.png"}),
        "",
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(lines))
    with pytest.warns(DataWarning) as caught:
        data = CaptionedImages.from_source(tmp_path / "list.jsonl", size=4)
    assert data.skipped == 2 and {":2:", ":4:"} == {m for w in caught for m in (":2:", ":4:") if m in str(w.message)}
    assert [(data[i]["caption"], red_of(data[i]["image"])) for i in range(2)] == [("an x", 100), ("a y", 200)]

    (tmp_path / "list.csv").write_text('path,caption\nimgs/y.png,"a y, in quotes"\nimgs/x.png,\nmissing.png,gone\n')
    with pytest.warns(DataWarning, match="list.csv:3"):
        data = CaptionedImages.from_source(tmp_path / "list.csv", size=4)
    assert len(data) == 2 and data[0]["caption"] == "a y, in quotes"
    with pytest.warns(DataWarning, match="missing.png"):
        assert data[1]["caption"] == "a y, in quotes"  # the missing file is skipped at read time
    assert data.skipped == 2

    with pytest.raises(InputError, match="folder, a .jsonl or a .csv"):
        CaptionedImages.from_source(tmp_path / "imgs" / "x.png")
    with pytest.raises(InputError, match="not found"):
        CaptionedImages.from_source(tmp_path / "nope.jsonl")


def test_all_unreadable_is_an_error_not_a_hang(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    (tmp_path / "a.txt").write_text("a")
    data = CaptionedImages.from_source(tmp_path, size=4)
    with pytest.warns(DataWarning), pytest.raises(InputError, match="none of the 1 items"):
        data[0]


def test_class_folders_number_classes_in_sorted_order(tmp_path):
    for cls, value in (("zebra", 30), ("apple", 10), ("mango", 20)):
        flat(tmp_path / cls / "0.jpg", (value, 0, 0), size=(16, 16))
    flat(tmp_path / "mango" / "deep" / "1.png", (25, 0, 0))
    (tmp_path / "readme.txt").write_text("ignored")
    data = ClassFolderImages(tmp_path, size=8)
    assert data.classes == ["apple", "mango", "zebra"]
    items = [data[i] for i in range(len(data))]
    assert [it["label"] for it in items] == [0, 1, 1, 2]
    reds = [red_of(it["image"]) for it in items]
    assert max(abs(r - e) for r, e in zip(reds, [10, 20, 25, 30])) <= 2  # JPEG is lossy
    with pytest.raises(InputError, match="no images"):
        ClassFolderImages(tmp_path / "apple")


def test_crop_policies_follow_the_official_preprocessing():
    portrait = Image.new("RGB", (20, 80), (0, 0, 255))
    portrait.paste((255, 0, 0), (0, 0, 20, 16))  # a red band along the top fifth
    top = prepare_image(portrait, 10, "top")
    centre = prepare_image(portrait, 10, "center")
    resized = prepare_image(portrait, 10, "resize")
    for pixels in (top, centre, resized):
        assert pixels.shape == (3, 10, 10) and pixels.min() >= -1 and pixels.max() <= 1
    red_rows = [(p[0, :, 5] > p[2, :, 5]).sum().item() for p in (top, centre, resized)]
    assert red_rows == [8, 0, 2]  # the top square keeps the band (16 of 20 rows), the centre crop loses it
    with pytest.raises(InputError, match="crop policy"):
        prepare_image(portrait, 10, "random")
    deep = Image.fromarray((np.asarray(portrait.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    grey = prepare_image(portrait.convert("L"), 10, "center")  # a 16-bit copy is read as its top 8 bits
    assert torch.allclose(prepare_image(deep, 10, "center"), grey, atol=1 / 127.5)  # not clamped to white


def test_vqa_jsonl_with_images_frame_folders_video_files_and_chat_turns(tmp_path):
    flat(tmp_path / "q.png", (60, 0, 0), size=(30, 20))
    for i in range(13):  # a folder of 13 frames: frame i has red value 10 * i
        flat(tmp_path / "clip" / f"{i:04d}.png", (10 * i, 0, 0), size=(8, 8))
    write_video(tmp_path / "v.mp4", [20 * i for i in range(10)])
    conversation = [
        {"from": "human", "value": "<image>\nWhat colour?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Sure?"},
        {"from": "gpt", "value": "yes"},
    ]
    lines = [
        {"image": "q.png", "question": "What is it?", "answer": "a square"},
        {"video": "clip", "question": "<video>\nWhat happens?", "answer": "it brightens"},
        {"video": "v.mp4", "conversations": conversation},
        {"image": "q.png"},
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.warns(DataWarning, match="qa.jsonl:4"):
        data = VQADataset(tmp_path / "qa.jsonl", size=8, num_frames=8)
    image, clip, video = data[0], data[1], data[2]
    assert image["pixels"].shape == (3, 8, 8) and not image["is_video"]
    assert image["turns"] == [("What is it?", "a square")]
    assert clip["is_video"] and clip["pixels"].shape == (8, 3, 8, 8)
    assert clip["turns"] == [("What happens?", "it brightens")]
    # Frames are the official even sampling: round(linspace(0, 12, 8)) = 0, 2, 3, 5, 7, 9, 10, 12.
    assert sample_frame_indices(13, 8) == [0, 2, 3, 5, 7, 9, 10, 12]
    assert [red_of(f) for f in clip["pixels"]] == [10 * i for i in (0, 2, 3, 5, 7, 9, 10, 12)]
    assert video["pixels"].shape == (8, 3, 8, 8)
    assert video["turns"] == [("What colour?", "red"), ("Sure?", "yes")]
    grey = [round((f.mean().item() + 1) * 127.5) for f in video["pixels"]]
    expected = [20 * i for i in sample_frame_indices(10, 8)]
    assert max(abs(a - b) for a, b in zip(grey, expected)) <= 4


def test_video_files_without_pyav_get_an_install_hint(tmp_path, monkeypatch):
    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"video": "v.mp4", "question": "q", "answer": "a"}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    with pytest.raises(InputError, match=r"arvision\[video\]"):
        VQADataset(tmp_path / "qa.jsonl")


def test_unreadable_video_is_skipped(tmp_path):
    pytest.importorskip("av")
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 10)
    flat(tmp_path / "ok.png", (90, 0, 0))
    lines = [{"video": "bad.mp4", "question": "q", "answer": "a"}, {"image": "ok.png", "question": "q2", "answer": "b"}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    data = VQADataset(tmp_path / "qa.jsonl", size=4)
    with pytest.warns(DataWarning, match="bad.mp4"):
        item = data[0]
    assert item["turns"] == [("q2", "b")] and data.skipped == 1


def test_image_files_take_every_image_under_a_folder_and_skip_corrupt_ones(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    (tmp_path / "a.txt").write_text("a caption is ignored")
    flat(tmp_path / "cats" / "b.jpg", (20, 0, 0))  # class folders are searched too
    (tmp_path / "cats" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / ".hidden.png").write_bytes(b"")
    data = ImageFiles.from_source(tmp_path, size=8)
    assert [p.name for p in data.paths] == ["a.png", "b.jpg", "c.png"]
    with pytest.warns(DataWarning, match="c.png"):
        items = [data[i] for i in range(len(data))]
    assert data.skipped == 1 and set(items[0]) == {"image", "index"}
    assert [red_of(item["image"]) for item in items] == [10, 20, 10]  # c.png's place taken by the next, a.png
    before = data.fingerprint()
    flat(tmp_path / "d.png", (30, 0, 0))
    assert ImageFiles.from_source(tmp_path, size=8).fingerprint() != before


def test_image_files_from_a_listing_and_what_they_refuse(tmp_path):
    flat(tmp_path / "imgs" / "x.png", (40, 0, 0))
    listing = tmp_path / "list.jsonl"
    listing.write_text(json.dumps({"image": "imgs/x.png"}) + "\n" + json.dumps({"caption": "no path"}) + "\n")
    with pytest.warns(DataWarning, match="list.jsonl:2: needs an image path"):
        data = ImageFiles.from_source(listing, size=4)
    assert len(data) == 1 and red_of(data[0]["image"]) == 40
    (tmp_path / "list.csv").write_text("file_name\nimgs/x.png\n")
    assert len(ImageFiles.from_source(tmp_path / "list.csv", size=4)) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images in"):
        ImageFiles.from_source(tmp_path / "empty")
    with pytest.raises(InputError, match="a folder, a .jsonl or a .csv"):
        ImageFiles.from_source(tmp_path / "imgs" / "x.png")
    with pytest.raises(InputError, match="unknown crop policy"):
        ImageFiles.from_source(tmp_path / "imgs", policy="stretch")


def test_image_files_skip_hidden_folders_and_follow_folder_links_once(tmp_path):
    root = tmp_path / "data"
    flat(root / "a.png", (10, 0, 0))
    flat(root / ".ipynb_checkpoints" / "a-checkpoint.png", (10, 0, 0))
    flat(tmp_path / "elsewhere" / "b.png", (20, 0, 0))
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "linked" / "loop").symlink_to(root, target_is_directory=True)  # a link back up the tree
    (root / "0_alias").symlink_to(root / "photos", target_is_directory=True)  # listed before its target
    flat(root / "photos" / "c.png", (30, 0, 0))
    (root / "up").symlink_to(tmp_path, target_is_directory=True)  # a parent of the root: only new folders count
    (root / "1_sub").symlink_to(tmp_path / "elsewhere" / "sub", target_is_directory=True)
    flat(tmp_path / "elsewhere" / "sub" / "d.png", (40, 0, 0))  # reached by two links: listed once
    names = [p.relative_to(root).as_posix() for p in ImageFiles.from_source(root, size=4).paths]
    assert names == ["1_sub/d.png", "a.png", "linked/b.png", "photos/c.png"]


def test_a_listing_that_is_a_folder_or_unreadable_is_an_input_error_naming_it(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=f"cannot read {tmp_path}: Is a directory"):
        VQADataset(tmp_path)
    listing = tmp_path / "qa.jsonl"
    listing.write_text(json.dumps({"image": "a.png", "question": "q", "answer": "a"}))
    real_open = Path.open

    def refusing_open(self, *args, **kwargs):  # chmod 000 does not stop root, who runs the tests here
        if self == listing:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    with pytest.raises(InputError, match="cannot read .*qa.jsonl: Permission denied"):
        VQADataset(listing)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_line_or_caption(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    bom = "\ufeff".encode()
    (tmp_path / "a.txt").write_bytes(bom + b"a caption")
    assert CaptionedImages.from_source(tmp_path).records[0].caption == "a caption"
    (tmp_path / "list.jsonl").write_bytes(bom + json.dumps({"image": "a.png", "caption": "x"}).encode())
    assert len(CaptionedImages.from_source(tmp_path / "list.jsonl")) == 1
    (tmp_path / "list.csv").write_bytes(bom + b"image,caption\r\na.png,x\r\n")  # Excel's "CSV UTF-8"
    assert len(CaptionedImages.from_source(tmp_path / "list.csv")) == 1


def test_csv_warnings_name_the_line_a_row_starts_on(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    (tmp_path / "list.csv").write_text('image,caption\n\na.png,"two\nlines"\n\nmissing-caption.png,\na.png,ok\n')
    with pytest.warns(DataWarning, match=r"list.csv:6:") as caught:
        data = CaptionedImages.from_source(tmp_path / "list.csv")
    assert len(caught) == 1 and [r.caption for r in data.records] == ["two\nlines", "ok"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('a.png,"a quote left open\na.png,swallowed\n', r"list.csv:3: not valid CSV \(unexpected end of data\)"),
        ("a.png," + "x" * 200_000 + "\n", r"list.csv:3: not valid CSV \(field larger than field limit"),
    ],
    ids=["quote left open", "field too long"],
)
def test_malformed_csv_is_an_input_error_naming_the_line(tmp_path, body, error):
    (tmp_path / "list.csv").write_text("image,caption\na.png,fine\n" + body)
    with pytest.raises(InputError, match=error):
        CaptionedImages.from_source(tmp_path / "list.csv")


def test_csv_headers_match_in_any_case_and_an_unknown_header_is_named_once(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    (tmp_path / "list.csv").write_text(" Image , CAPTION\na.png,x\n")
    assert len(CaptionedImages.from_source(tmp_path / "list.csv")) == 1
    (tmp_path / "list.csv").write_text("image;caption\na.png;x\n")
    with pytest.raises(InputError, match="header .* names the columns 'image;caption'; expected one of image, path"):
        CaptionedImages.from_source(tmp_path / "list.csv")
    (tmp_path / "list.csv").write_text("a.png,x\n")  # no header
    with pytest.raises(InputError, match="columns 'a.png', 'x'; expected one of image, .* and one of caption"):
        CaptionedImages.from_source(tmp_path / "list.csv")


def test_caption_files_in_upper_case_are_found_and_unreadable_ones_skipped(tmp_path, monkeypatch):
    for name in ("a", "B", "c"):
        flat(tmp_path / f"{name}.PNG", (10, 0, 0))
    (tmp_path / "a.txt").write_text("lower")
    (tmp_path / "B.TXT").write_text("upper")
    (tmp_path / "c.txt").write_text("locked")
    real_read = Path.read_text

    def refusing_read(self, *args, **kwargs):  # chmod 000 does not stop root, who runs the tests here
        if self.name == "c.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refusing_read)
    with pytest.warns(DataWarning, match=r"c.txt: cannot read \(Permission denied\) \(skipped, 1 so far\)"):
        data = CaptionedImages.from_source(tmp_path)
    assert [r.caption for r in data.records] == ["upper", "lower"]  # B.PNG sorts first


def test_a_link_to_a_missing_image_is_skipped_and_counted(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    data = ImageFiles.from_source(tmp_path, size=4)
    with pytest.warns(DataWarning, match="b.png"):
        assert red_of(data[1]["image"]) == 10
    assert data.skipped == 1


def test_class_folders_refuse_a_file_and_classes_without_images_and_name_loose_images(tmp_path):
    flat(tmp_path / "cat" / "0.png", (10, 0, 0))
    with pytest.raises(InputError, match="0.png is a file, not a folder"):
        ClassFolderImages(tmp_path / "cat" / "0.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images")
    flat(tmp_path / "notes" / ".hidden.png", (10, 0, 0))
    with pytest.raises(InputError, match="class folders without images under .*: empty, notes"):
        ClassFolderImages(tmp_path)
    (tmp_path / "empty").rmdir()
    flat(tmp_path / "notes" / "1.png", (20, 0, 0))
    flat(tmp_path / "stray.jpg", (30, 0, 0))
    with pytest.warns(DataWarning, match=r"images directly in .* are left out: stray.jpg"):
        data = ClassFolderImages(tmp_path)
    assert data.classes == ["cat", "notes"] and len(data) == 2


def test_vqa_conversations_pair_each_question_with_the_next_answer_and_count_what_is_left_out(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))

    def chat(*messages):
        return {"image": "a.png", "conversations": [{"from": who, "value": text} for who, text in messages]}

    lines = [
        chat(("system", "Be brief."), ("human", "<image>\nQ1"), ("gpt", "A1"), ("human", "Q2"), ("gpt", "A2")),
        chat(("human", "Q1"), ("gpt", "A1"), ("human", "Q2"), ("human", "Q3"), ("gpt", "A3"), ("gpt", "again")),
        chat(("human", "Q1"), ("gpt", " "), ("human", "Q2"), ("gpt", "A2")),
        {"image": "a.png", "question": "Q", "answer": ""},
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.warns(DataWarning) as caught:
        data = VQADataset(tmp_path / "qa.jsonl", size=4)
    assert [r.turns for r in data.records] == [
        (("Q1", "A1"), ("Q2", "A2")),
        (("Q1", "A1"), ("Q3", "A3")),
        (("Q2", "A2"),),
    ]
    assert [str(w.message).split("qa.jsonl:")[1] for w in caught] == [
        "2: message 3, a question, has no answer, a turn left out (skipped, 1 so far)",
        "2: message 6, an answer, follows no question, a turn left out (skipped, 2 so far)",
        "3: the answer to 'Q1' is empty, a turn left out (skipped, 3 so far)",
        "4: needs an image or video path and question/answer turns (the answer to 'Q' is empty) (skipped, 4 so far)",
    ]


def test_a_vqa_image_that_is_a_folder_is_skipped_not_read_as_video_frames(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    flat(tmp_path / "frames" / "0.png", (20, 0, 0))
    lines = [{"image": "frames", "question": "q", "answer": "x"}, {"image": "a.png", "question": "q2", "answer": "y"}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    data = VQADataset(tmp_path / "qa.jsonl", size=4)
    assert [r.is_video for r in data.records] == [False, False]
    with pytest.warns(DataWarning, match="frames is a folder, not an image file"):
        assert data[0]["turns"] == [("q2", "y")]


def test_vqa_data_may_be_a_llava_json_array(tmp_path):
    flat(tmp_path / "a.png", (10, 0, 0))
    chat = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    records = [{"id": "1", "image": "a.png", "conversations": chat}, {"id": "2", "image": "a.png"}]
    (tmp_path / "llava.json").write_text(json.dumps(records, indent=2))
    with pytest.warns(DataWarning, match=r"llava.json item 1: needs an image or video path"):
        data = VQADataset(tmp_path / "llava.json", size=4)
    assert [r.turns for r in data.records] == [(("Q?", "A."),)]
    (tmp_path / "broken.json").write_text(json.dumps(records, indent=2)[:-20])
    with pytest.raises(InputError, match=r"broken.json:\d+: not a valid JSON array"):
        VQADataset(tmp_path / "broken.json")
