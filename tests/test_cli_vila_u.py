from pathlib import Path

import numpy as np
import PIL.Image

from arvision.cli import main
from arvision.cli.common import numbered_paths
from arvision.data.media import load_video_frames
from vilau_common import FIXTURE, cases


def test_describe_prints_the_answer(tmp_path, capsys):
    image = tmp_path / "astronaut.png"
    PIL.Image.fromarray(cases()["img.astronaut_uint8"].numpy()).save(image)
    code = main(
        ["describe", str(image), "What is in the image?", "--model", str(FIXTURE), "--greedy", "--max-new-tokens", "6"]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == "startror tensor         ca?"
    options = ["--model", str(FIXTURE), "--greedy", "--max-new-tokens", "6"]
    assert main(["describe", str(image), "What is in the image?", "Describe it.", *options]) == 0
    first, second = capsys.readouterr().out.strip().split("\n\n")
    assert first == "startror tensor         ca?"
    assert main(["describe", str(image), "Describe it.", *options]) == 0
    assert capsys.readouterr().out.strip() == second
    sampled = ["--model", str(FIXTURE), "--max-new-tokens", "8"]
    assert main(["describe", str(image), "What is in the image?", "Describe it.", "--seed", "5", *sampled]) == 0
    _, second_sampled = capsys.readouterr().out.strip().split("\n\n")
    assert main(["describe", str(image), "Describe it.", "--seed", "6", *sampled]) == 0
    assert capsys.readouterr().out.strip() == second_sampled  # answer i of --seed S is --seed S+i's


def test_describe_reports_bad_input_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("no")
    assert main(["describe", str(bad), "What?", "--model", str(FIXTURE)]) == 2
    assert "not a readable image" in capsys.readouterr().err
    image = tmp_path / "astronaut.png"
    PIL.Image.fromarray(cases()["img.astronaut_uint8"].numpy()).save(image)
    assert main(["describe", str(image), "What is <image> here?", "--model", str(FIXTURE)]) == 2
    assert "the question contains <image>" in capsys.readouterr().err
    assert main(["describe", str(image), "What?", "--model", str(FIXTURE), "--frames", "0"]) == 2
    assert "--frames must be at least 1, got 0" in capsys.readouterr().err


def test_describe_reads_the_media_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from arvision.pipelines.vila_u import VilaUPipeline

    loads = []
    monkeypatch.setattr(VilaUPipeline, "from_pretrained", lambda *a, **k: loads.append(a) or 1 / 0)
    assert main(["describe", str(tmp_path / "missing.mp4"), "What?", "--model", str(FIXTURE)]) == 2
    assert "missing.mp4" in capsys.readouterr().err and not loads  # a release's load takes minutes
    assert main(["describe", str(tmp_path / "a.png"), "What?", "--model", str(tmp_path)]) == 2
    assert "is not a VILA-U folder" in capsys.readouterr().err and not loads


def test_generate_video_writes_an_animation_and_a_strip(tmp_path, capsys):
    out = tmp_path / "clip.gif"
    code = main(
        ["generate-video", "Waves on a beach.", "-o", str(out), "--model", str(FIXTURE), "--seed", "0", "--quiet"]
    )
    assert code == 0
    with PIL.Image.open(out) as anim:
        assert anim.n_frames == 8 and anim.size == (32, 32)
    with PIL.Image.open(tmp_path / "clip.strip.png") as strip:
        assert strip.size == (256, 32)
    mp4 = tmp_path / "clip.mp4"
    args = ["generate-video", "Waves on a beach.", "--model", str(FIXTURE), "--seed", "0", "--quiet", "--no-strip"]
    assert main([*args, "-o", str(mp4)]) == 0
    with PIL.Image.open(tmp_path / "clip.strip.png") as strip:  # the lossless frames, side by side
        frames = np.asarray(strip.convert("RGB"), dtype=float).reshape(32, 8, 32, 3).transpose(1, 0, 2, 3)
    mp4_frames = [np.asarray(frame, dtype=float) for frame in load_video_frames(mp4, 8)]

    def blocks(frame):  # 4x4 means: H.264 halves the colour resolution, and these frames are speckled
        return frame.reshape(8, 4, 8, 4, 3).mean((1, 3))

    assert len(mp4_frames) == 8
    assert all(np.abs(blocks(a) - blocks(b)).mean() < 5 for a, b in zip(frames, mp4_frames))  # another frame: 30+
    assert main([*args, "-n", "2", "--seed", "3", "-o", str(tmp_path / "two.gif")]) == 0
    assert main([*args, "--seed", "4", "-o", str(tmp_path / "alone.gif")]) == 0
    with PIL.Image.open(tmp_path / "two-001.gif") as second, PIL.Image.open(tmp_path / "alone.gif") as alone:
        first_frames = np.asarray(second.convert("RGB"), int), np.asarray(alone.convert("RGB"), int)
    assert np.abs(first_frames[0] - first_frames[1]).mean() < 2  # video i of --seed S is --seed S+i's
    assert main(["generate-video", "x", "-o", str(tmp_path / "clip.png"), "--model", str(FIXTURE)]) == 2
    assert "--output must end in .gif, .webp, .mp4" in capsys.readouterr().err


def test_generate_video_defaults_are_the_models():
    from arvision.cli import build_parser
    from arvision.models.vila_u import CODE_TEMPERATURE, CODE_TOP_K, CODE_TOP_P, DEFAULT_CFG

    args = build_parser().parse_args(["generate-video", "x", "--model", "m"])
    assert (args.cfg, args.temperature, args.top_k, args.top_p) == (
        DEFAULT_CFG,
        CODE_TEMPERATURE,
        CODE_TOP_K,
        CODE_TOP_P,
    )


def test_numbered_paths_keep_one_name_and_number_several():
    out = Path("runs/clip.gif")
    assert numbered_paths(out, 1) == [out]
    assert numbered_paths(out, 2) == [Path("runs/clip-000.gif"), Path("runs/clip-001.gif")]


def test_generate_dispatches_on_a_vila_u_folder(tmp_path, capsys):
    out = tmp_path / "img.png"
    args = ["generate", "A red circle.", "--model", str(FIXTURE), "-n", "2", "--seed", "3", "--quiet", "-o", str(out)]
    assert main(args) == 0
    written = [tmp_path / "img-000.png", tmp_path / "img-001.png"]
    assert all(p.is_file() for p in written)
    again = tmp_path / "again.png"
    assert main([*args[:-1], str(again)]) == 0
    assert PIL.Image.open(written[0]).tobytes() == PIL.Image.open(tmp_path / "again-000.png").tobytes()
    assert main(["generate", "x", "--model", str(FIXTURE), "--discrete-only", "-o", str(out)]) == 2
    assert "HART models only" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(FIXTURE), "--diffusion-steps", "4", "-o", str(out)]) == 2
    assert "--diffusion-steps applies to HART models only" in capsys.readouterr().err


def test_generate_video_refuses_an_output_it_cannot_write_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "dir.gif").mkdir()
    (tmp_path / "taken.strip.png").mkdir()
    (tmp_path / "afile").write_text("x")
    base = ["generate-video", "x", "--model", str(tmp_path / "missing"), "-o"]
    for output, message in (
        ("dir.gif", "dir.gif: it is a folder"),
        ("afile/v.gif", f"afile/v.gif: {tmp_path / 'afile'} is a file, not a folder"),
        ("taken.gif", "taken.strip.png: it is a folder"),
    ):
        assert main([*base, str(tmp_path / output)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"cannot write -o {tmp_path}/" in err and message in err and len(err.splitlines()) == 1
    assert main([*base, str(tmp_path / "taken.gif"), "--no-strip"]) == 2  # the strip is not written: the model loads
    assert "taken" not in capsys.readouterr().err


def test_generate_video_refuses_a_format_it_cannot_write_before_the_model_loads(tmp_path, capsys, monkeypatch):
    PIL.Image.init()  # registers every writer this Pillow has
    monkeypatch.delitem(PIL.Image.SAVE_ALL, "WEBP")  # Pillow built without libwebp
    assert main(["generate-video", "x", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "v.webp")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write .webp files: this Pillow was built without WEBP support" in err and len(err.splitlines()) == 1
