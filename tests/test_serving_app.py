import asyncio
import base64
import io
import re
import shutil
import subprocess

import httpx
import numpy as np
import PIL.Image
import pytest
import torch
from fastapi.testclient import TestClient

from arvision.cli import main as cli_main
from arvision.data.media import load_video_frames
from arvision.errors import InputError
from arvision.pipelines.hart import HartPipeline
from arvision.serving.app import create_app
from hart_common import HART_TINY
from media_common import write_video
from vilau_common import FIXTURE, cases, fixture_pipeline


@pytest.fixture(scope="module")
def hart(tiny_qwen2_24):
    return HartPipeline.from_pretrained(HART_TINY, text_encoder=tiny_qwen2_24)


@pytest.fixture(scope="module")
def client(hart):
    with TestClient(create_app(hart, fixture_pipeline(), names={"generate": "tiny"}, max_batch=4)) as client:
        yield client


def _decode(data: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(data))))


def _alone(pipe, prompt, seed):
    return np.asarray(pipe(prompt, seed=seed, progress=False).images[0])


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the rounding of a batched float sum (one uint8 level)."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_base64(image: PIL.Image.Image) -> str:
    return base64.b64encode(_png(image)).decode()


def test_the_page_and_health(client):
    page = client.get("/")
    assert page.status_code == 200 and "/v1/generate" in page.text and "/v1/describe" in page.text
    health = client.get("/health").json()
    assert health["generate"] == {"model": "tiny", "kind": "hart", "size": 32, "guidance_scale": 4.5}
    assert health["describe"]["image_size"] == fixture_pipeline().config.tower.image_size
    assert health["max_batch"] == 4


def test_the_page_has_image_to_image_fields_and_its_script_parses(client, tmp_path):
    page = client.get("/").text
    form = page[page.index('<form id="generate">') : page.index("</form>")]
    assert 'type="file" name="start"' in form and 'name="strength"' in form and 'max="1"' in form
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to parse the page's script")
    (script,) = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    (tmp_path / "page.js").write_text(script)
    checked = subprocess.run([node, "--check", str(tmp_path / "page.js")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_generate_returns_pngs_each_as_its_seed_makes_it_alone(client, hart):
    response = client.post("/v1/generate", json={"prompt": "a red cube", "n": 3, "seed": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seeds"] == [7, 8, 9] and (body["width"], body["height"]) == (32, 32)
    for data, seed in zip(body["images"], body["seeds"]):
        assert _close(_decode(data), _alone(hart, "a red cube", seed))
    assert body["warnings"] == []
    constant = client.post("/v1/generate", json={"prompt": "a red cube", "seed": 4, "guidance_schedule": "constant"})
    alone = hart("a red cube", seed=4, guidance_schedule="constant", progress=False).images[0]
    assert _close(_decode(constant.json()["images"][0]), np.asarray(alone))
    assert not _close(_decode(constant.json()["images"][0]), _alone(hart, "a red cube", 4))
    random_seed = client.post("/v1/generate", json={"prompt": "a red cube"}).json()["seeds"]
    assert len(random_seed) == 1 and 0 <= random_seed[0] < 2**31
    limit = hart.text_encoder.max_length  # the tiny Qwen2's tokenizer has one token per character
    exact = client.post("/v1/generate", json={"prompt": "x" * limit, "negative_prompt": "blurry"}).json()
    assert exact["warnings"] == []
    longer = client.post("/v1/generate", json={"prompt": "x" * (limit + 5)}).json()
    assert longer["warnings"] == [f"the prompt is {limit + 5} tokens long; the model reads its first {limit}"]


def _generate_concurrently(pipe, requests: list[dict]) -> tuple[list[dict], object]:
    """POSTs the requests to /v1/generate at once (within one batching window): their bodies and the queue stats."""

    async def scenario():
        app = create_app(pipe, max_batch=8, max_wait_s=1.0)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post("/v1/generate", json=r, timeout=60) for r in requests))
        stats = app.state.queue.stats()
        app.state.queue.close()
        return [r.json() for r in responses], stats

    return asyncio.run(scenario())


def test_image_to_image_requests_batch_and_draw_what_the_pipeline_draws_alone(hart):
    start = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    other = PIL.Image.new("RGB", (48, 40), (30, 200, 30))
    requests = [
        {"prompt": "a red cube", "n": 2, "seed": 1, "image": _png_base64(start), "strength": 0.5},
        {"prompt": "a blue ball", "seed": 5, "image": _png_base64(other), "strength": 0.5},
        {"prompt": "a blue ball", "seed": 5},  # no image: another batch
    ]
    bodies, stats = _generate_concurrently(hart, requests)
    assert (stats.jobs, stats.batches, stats.largest_batch) == (3, 2, 3)
    for body, prompt, image in ((bodies[0], "a red cube", start), (bodies[1], "a blue ball", other)):
        for data, seed in zip(body["images"], body["seeds"]):
            alone = hart(prompt, image=image, strength=0.5, seed=seed, progress=False).images[0]
            assert _close(_decode(data), np.asarray(alone))
    assert _close(_decode(bodies[2]["images"][0]), _alone(hart, "a blue ball", 5))


def test_concurrent_requests_share_a_batch_and_get_what_they_would_alone(hart):
    requests = [{"prompt": "a red cube", "n": 2, "seed": 1}, {"prompt": "a blue ball", "seed": 5, "top_k": 7}]
    requests += [{"prompt": "a blue ball", "n": 3, "seed": 11}]
    bodies, stats = _generate_concurrently(hart, requests)
    # The first and last requests share settings (one batch of 5 images); top_k=7 runs apart.
    assert (stats.jobs, stats.batches, stats.largest_batch) == (3, 2, 5)
    assert bodies[1]["seeds"] == [5]
    top_k_7 = hart("a blue ball", seed=5, top_k=7, progress=False).images[0]
    assert _close(_decode(bodies[1]["images"][0]), np.asarray(top_k_7))
    for body, prompt in ((bodies[0], "a red cube"), (bodies[2], "a blue ball")):
        for data, seed in zip(body["images"], body["seeds"]):
            assert _close(_decode(data), _alone(hart, prompt, seed))


@pytest.mark.parametrize(
    "request_body, status, message",
    [
        ({"prompt": "   "}, 400, "prompt 0 is empty"),
        ({"prompt": "a cube", "n": 5}, 400, "n must be within 1..4"),
        ({"prompt": "a cube", "n": 10**9}, 400, "n must be within 1..4"),
        ({"prompt": "a cube", "size": 33}, 400, "not a multiple of the tokenizer's downsampling factor"),
        ({"prompt": "a cube", "negative_prompt": " "}, 400, "negative prompt is empty"),
        ({"prompt": "a cube", "seed": 2**31 - 1, "n": 2}, 400, "seed must be within"),
        ({"prompt": "a cube", "diffusion_steps": 5000}, 400, "diffusion_steps must be within 1..1000"),
        ({"prompt": "a cube", "top_p": 2}, 422, "top_p"),
        ({"prompt": "a cube", "steps": 3}, 422, "steps"),
        ({"prompt": "x" * 10_001}, 422, "at most 10000 characters"),
        ({}, 422, "prompt"),
        ({"prompt": "a cube", "strength": 0.5}, 400, "strength needs an image"),
        ({"prompt": "a cube", "image": "not base64!"}, 400, "image is not valid base64"),
        ({"prompt": "a cube", "image": base64.b64encode(b"hello").decode()}, 400, "the image"),
        ({"prompt": "a cube", "image": ""}, 400, "image is empty"),
        (
            {"prompt": "a cube", "image": _png_base64(PIL.Image.new("RGB", (4, 4))), "strength": 2},
            422,
            "strength",
        ),
    ],
)
def test_bad_generation_requests_are_named(client, request_body, status, message):
    response = client.post("/v1/generate", json=request_body)
    assert response.status_code == status
    assert message in response.text


@pytest.mark.parametrize(
    "path, field, value",
    [
        ("/v1/generate", "guidance_scale", "NaN"),
        ("/v1/generate", "guidance_scale", "Infinity"),
        ("/v1/generate", "guidance_scale", "-Infinity"),
        ("/v1/generate", "temperature", "NaN"),
        ("/v1/generate", "top_p", "NaN"),
        ("/v1/generate", "strength", "NaN"),
        ("/v1/generate", "size", "1e400"),
        ("/v1/generate", "n", "NaN"),
        ("/v1/generate-video", "fps", "Infinity"),
    ],
)
def test_a_non_finite_number_is_a_422_naming_its_field(client, path, field, value):
    # Python's json (which Starlette reads bodies with) takes NaN, Infinity and 1e400 (as inf)
    body = f'{{"prompt": "a cube", "{field}": {value}}}'
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field] and "finite" in error["msg"]


@pytest.mark.parametrize("field, value", [("temperature", "nan"), ("top_p", "nan"), ("temperature", "inf")])
def test_a_non_finite_describe_option_is_a_422_naming_it(client, field, value):
    image = {"file": ("a.png", _png(PIL.Image.new("RGB", (8, 8))))}
    response = client.post("/v1/describe", files=image, data={"question": "What?", field: value})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field]


def test_describe_answers_as_the_pipeline_does_with_the_seed_it_reports(client):
    image = PIL.Image.fromarray(cases()["img.astronaut_uint8"].numpy())
    form = {"question": "What is in the image?", "max_new_tokens": "6"}
    body = client.post("/v1/describe", files={"file": ("a.png", _png(image))}, data=form).json()
    expected = fixture_pipeline().describe(image, "What is in the image?", seed=body["seed"], max_new_tokens=6)
    assert body["answer"] == expected
    greedy = client.post("/v1/describe", files={"file": ("a.png", _png(image))}, data={**form, "temperature": "0"})
    expected = fixture_pipeline().describe(image, form["question"], temperature=0.0, max_new_tokens=6)
    assert greedy.json()["answer"] == expected


def test_a_video_upload_is_read_as_its_frames(client, tmp_path):
    video = write_video(tmp_path / "clip.mp4", [i * 20 for i in range(10)])
    form = {"question": "What happens?", "temperature": "0", "max_new_tokens": "4", "num_frames": "4"}
    body = client.post("/v1/describe", files={"file": ("clip.mp4", video.read_bytes())}, data=form).json()
    frames = load_video_frames(video, 4)
    assert body["answer"] == fixture_pipeline().describe(frames, "What happens?", temperature=0.0, max_new_tokens=4)
    assert body["answer"] != fixture_pipeline().describe(frames[:1], "What happens?", temperature=0.0, max_new_tokens=4)


@pytest.mark.parametrize(
    "upload, question, status, message",
    [
        (("notes.txt", b"hello"), "What?", 400, "not a readable image or video: 'notes.txt'"),
        (("empty.png", b""), "What?", 400, "the uploaded file is empty"),
        (("a.png", None), "  ", 400, "the question is empty"),
        (("a.png", None), "", 400, "the question is empty"),
        (("a.png", None), "What is <image>?", 400, "special tokens"),
    ],
)
def test_bad_describe_requests_are_named(client, upload, question, status, message):
    name, data = upload
    data = _png(PIL.Image.new("RGB", (8, 8))) if data is None else data
    response = client.post("/v1/describe", files={"file": (name, data)}, data={"question": question})
    assert response.status_code == status and message in response.text


def test_a_body_that_is_not_json_is_a_short_json_422(client):
    png = _png(PIL.Image.new("RGB", (8, 8)))  # not UTF-8: echoing it back had failed with a plain-text 500
    for response in (
        client.post("/v1/generate", content=png, headers={"content-type": "image/png"}),
        client.post("/v1/generate", files={"file": ("a.png", png)}),
        client.post("/v1/generate", content="x" * 100_000, headers={"content-type": "text/plain"}),
    ):
        assert response.status_code == 422 and response.json()["detail"]
        assert len(response.content) < 2000  # the body is not copied back


def test_describe_names_unknown_form_fields_and_base64_may_be_wrapped(client):
    upload = {"file": ("a.png", _png(PIL.Image.new("RGB", (8, 8))))}
    response = client.post("/v1/describe", files=upload, data={"question": "What?", "temprature": "5"})
    assert response.status_code == 400 and "unknown form field(s) temprature" in response.text
    wrapped = base64.encodebytes(_png(PIL.Image.new("RGB", (16, 16)))).decode()  # MIME lines of 76 characters
    assert "\n" in wrapped.strip()
    body = {"prompt": "a cube", "image": wrapped, "strength": 0.5, "seed": 1}
    assert client.post("/v1/generate", json=body).status_code == 200


def test_an_upload_over_the_limit_is_refused(hart):
    with TestClient(create_app(None, fixture_pipeline(), max_upload_bytes=100)) as small:
        response = small.post("/v1/describe", files={"file": ("a.png", b"x" * 101)}, data={"question": "What?"})
        assert response.status_code == 413 and "request body is larger than 100 bytes" in response.text
        missing = small.post("/v1/generate", json={"prompt": "a cube"})
        assert missing.status_code == 404 and "no text-to-image model" in missing.text
        assert "generate-section" in small.get("/").text and small.get("/health").json()["generate"] is None
    with pytest.raises(InputError, match="a text-to-image model, a question-answering model, or both"):
        create_app()


def test_cli_serve_builds_the_app_from_folders(tmp_path, monkeypatch, capsys, tiny_qwen2_24):
    import uvicorn

    from arvision.cli import serve

    monkeypatch.setattr(serve, "check_port", lambda host, port: None)  # whether 8000 is free here is not the point
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: served.update(app=app, port=port))
    args = ["serve", "--model", str(HART_TINY), "--text-encoder", str(tiny_qwen2_24), "--describe-model", str(FIXTURE)]
    assert cli_main([*args, "--port", "9001", "--max-batch", "2"]) == 0
    assert "serving on http://127.0.0.1:9001" in capsys.readouterr().out
    with TestClient(served["app"]) as client:
        health = client.get("/health").json()
        assert health["max_batch"] == 2 and health["describe"]["model"] == str(FIXTURE)
        assert client.post("/v1/generate", json={"prompt": "a cube", "n": 2}).status_code == 200
    assert cli_main(["serve", "--model", str(FIXTURE), "--text-encoder", str(tiny_qwen2_24)]) == 2
    assert "--text-encoder applies to HART models only" in capsys.readouterr().err
    assert cli_main(["serve", "--model", str(FIXTURE)]) == 0  # one VILA-U generates and answers
    app = served["app"]
    assert app.state.models.generator is app.state.models.describer
    assert cli_main(["serve", "--no-generate", "--no-describe"]) == 2
    assert "leave nothing to serve" in capsys.readouterr().err
    assert cli_main(["serve", "--no-generate", "--model", str(HART_TINY)]) == 2
    assert "--model has nothing to do with --no-generate" in capsys.readouterr().err


def test_a_streamed_body_over_the_limit_is_refused_as_it_arrives(hart):
    app = create_app(hart, max_upload_bytes=1000)
    with TestClient(app) as client:
        chunks = iter([b"x" * 600, b"x" * 600, b"x" * 10**6])  # no Content-Length: sent chunked
        response = client.post("/v1/generate", content=chunks, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "larger than 1000 bytes" in response.text


def test_a_request_whose_client_left_is_dropped_before_it_runs(hart):
    import json
    import threading

    from arvision.serving.batching import BatchingQueue

    ran, release = [], threading.Event()

    def runner(key, payloads):
        ran.extend(payloads)
        assert release.wait(10)
        return [[PIL.Image.new("RGB", (4, 4))] for _ in payloads]

    app = create_app(hart)
    app.state.queue.close()
    app.state.queue = BatchingQueue(runner, max_wait_s=0.0)
    first = app.state.queue.submit("busy", "first")  # keeps the worker busy
    body = json.dumps({"prompt": "a cube", "seed": 1}).encode()
    sent, messages = [], iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive():
        return next(messages, {"type": "http.disconnect"})  # the client has gone once the body is read

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/generate", "http_version": "1.1", "scheme": "http"}
    scope.update(headers=[(b"content-type", b"application/json")], query_string=b"", root_path="")
    asyncio.run(app(scope, receive, send))
    release.set()
    first.result(10)
    app.state.queue.close()
    assert ran == ["first"]  # the abandoned request never reached the model
    assert sent[0]["status"] == 499


def test_the_app_can_be_served_again_and_reports_a_stopped_worker(hart):
    app = create_app(hart)
    for _ in range(2):
        with TestClient(app) as client:
            assert client.post("/v1/generate", json={"prompt": "a cube", "seed": 0}).status_code == 200
    with TestClient(app) as client:
        app.state.queue.close()
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "stopped"
        assert client.post("/v1/generate", json={"prompt": "a cube"}).status_code == 503


def test_cli_serve_names_a_bad_port_and_a_missing_extra(monkeypatch, capsys):
    import importlib.util

    with pytest.raises(SystemExit):
        cli_main(["serve", "--port", "70000"])
    assert "a port is 1..65535, got 70000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["serve", "--port", "0"])
    assert "must be >= 1, got 0" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert cli_main(["serve"]) == 2
    assert "needs the serve extra (uvicorn missing): pip install 'arvision[serve]'" in capsys.readouterr().err


def test_cli_serve_names_a_port_in_use_before_the_models_load(tmp_path, capsys):
    import socket

    from arvision.cli import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        missing = str(tmp_path / "missing")  # loading it would be named instead
        assert cli_main(["serve", "--port", str(port), "--model", missing, "--no-describe"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot listen on --host 127.0.0.1 --port {port}: Address already in use" in err
    assert len(err.splitlines()) == 1
    serve.check_port("127.0.0.1", port)  # free again


def test_the_port_check_binds_ipv6_as_the_server_does_beside_an_ipv4_listener():
    import socket

    from arvision.cli import serve

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket() as taken:  # an IPv4 listener on all addresses
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            serve.check_port("::", port)  # asyncio binds "::" IPv6-only, so uvicorn would serve: not refused
        except InputError as exc:
            if "Cannot assign requested address" in str(exc) or "not supported" in str(exc):
                pytest.skip(f"IPv6 unusable here: {exc}")
            raise


def test_a_vila_u_server_generates_each_image_as_its_seed_makes_it_alone():
    vila = fixture_pipeline()

    async def scenario():
        app = create_app(vila, vila, max_wait_s=1.0)
        requests = [{"prompt": "A red panda sitting on a tree.", "n": 2, "seed": 3}, {"prompt": "Waves.", "seed": 9}]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post("/v1/generate", json=r, timeout=60) for r in requests))
            body = {"prompt": "a cube", "more_smooth": True, "guidance_schedule": "constant", "size": 64}
            refused = await http.post("/v1/generate", json=body)
            start = _png_base64(PIL.Image.new("RGB", (8, 8)))
            no_image = await http.post("/v1/generate", json={"prompt": "a cube", "image": start})
        stats = app.state.queue.stats()
        app.state.queue.close()
        return [r.json() for r in responses], stats, refused, no_image

    bodies, stats, refused, no_image = asyncio.run(scenario())
    assert (stats.jobs, stats.batches) == (2, 1)
    for body, prompt in zip(bodies, ["A red panda sitting on a tree.", "Waves."]):
        for data, seed in zip(body["images"], body["seeds"]):
            assert _close(_decode(data), np.asarray(vila.generate_image(prompt, seed=seed)[0]))
    assert refused.status_code == 400 and "guidance_schedule, more_smooth apply to HART models only" in refused.text
    assert no_image.status_code == 400 and "image applies to HART models only" in no_image.text


def test_videos_come_from_the_vila_u_model_each_as_its_seed_makes_it_alone(hart, tmp_path):
    vila = fixture_pipeline()
    with TestClient(create_app(hart, vila, max_batch=4)) as client:  # HART generates images, VILA-U the videos
        assert client.get("/health").json()["video"] == {"model": None, "frames": 8}
        response = client.post("/v1/generate-video", json={"prompt": "Waves on a beach.", "n": 2, "seed": 3})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["format"], body["seeds"], body["frames"], body["width"]) == ("mp4", [3, 4], 8, 32)
        path = tmp_path / "second.mp4"
        path.write_bytes(base64.b64decode(body["videos"][1]))
        decoded = [np.asarray(frame, dtype=float) for frame in load_video_frames(path, 8)]
        alone = [np.asarray(frame, dtype=float) for frame in vila.generate_video("Waves on a beach.", seed=4)[0]]

        def blocks(frame):  # 4x4 means: H.264 halves the colour resolution of these speckled frames
            return frame.reshape(8, 4, 8, 4, 3).mean((1, 3))

        assert len(decoded) == 8 and all(np.abs(blocks(a) - blocks(b)).mean() < 5 for a, b in zip(decoded, alone))
        gif = client.post("/v1/generate-video", json={"prompt": "Waves.", "format": "gif", "fps": 2}).json()
        with PIL.Image.open(io.BytesIO(base64.b64decode(gif["videos"][0]))) as animation:
            assert animation.n_frames == 8 and animation.info["duration"] == 500
        for request_body, status, message in (
            ({"prompt": "Waves.", "fps": 0}, 400, "fps must be within 0.002..1000"),
            ({"prompt": "Waves.", "format": "avi"}, 422, "format"),
            ({"prompt": "Waves.", "n": 5}, 400, "n must be within 1..4"),
            ({"prompt": " "}, 400, "prompt 0 is empty"),
        ):
            refused = client.post("/v1/generate-video", json=request_body)
            assert refused.status_code == status and message in refused.text
    with TestClient(create_app(hart)) as client:
        missing = client.post("/v1/generate-video", json={"prompt": "Waves."})
        assert missing.status_code == 404 and "videos need one" in missing.text


def test_a_video_format_the_server_cannot_write_is_refused_before_it_is_generated(monkeypatch):
    vila = fixture_pipeline()
    PIL.Image.init()  # registers every writer this Pillow has, so the one removed stays removed
    monkeypatch.delitem(PIL.Image.SAVE_ALL, "WEBP")  # a Pillow built without WebP
    generated = []
    monkeypatch.setattr(vila, "generate_video", lambda *a, **k: generated.append(1))
    with TestClient(create_app(vila, vila)) as client:
        refused = client.post("/v1/generate-video", json={"prompt": "Waves.", "format": "webp"})
    assert refused.status_code == 400 and "webp" in refused.text.lower() and not generated


def test_a_class_conditional_hart_takes_class_names_and_names_unknown_ones(hart):
    from test_pipelines_hart import tiny_class_conditional

    torch.manual_seed(0)
    c2i = HartPipeline(tiny_class_conditional(), hart.tokenizer, id2label={1: "tench, Tinca tinca", 7: "cock"})
    with TestClient(create_app(c2i)) as client:
        body = client.post("/v1/generate", json={"prompt": "Tinca tinca", "seed": 2}).json()
        alone = c2i(class_labels=[1], seed=2, progress=False).images[0]
        assert _close(_decode(body["images"][0]), np.asarray(alone)) and body["warnings"] == []
        refused = client.post("/v1/generate", json={"prompt": "cok"})
        assert refused.status_code == 400 and "unknown class name 'cok'; did you mean 'cock'" in refused.text
        assert client.get("/health").json()["queue"]["failed"] == 0  # refused before it reached the queue


def test_strength_is_named_as_a_hart_option_on_a_vila_u_generator():
    vila = fixture_pipeline()
    with TestClient(create_app(vila, vila)) as client:
        refused = client.post("/v1/generate", json={"prompt": "a cube", "strength": 0.5})
    assert refused.status_code == 400 and "strength applies to HART models only" in refused.text


def test_an_upload_that_decodes_past_the_pixel_limit_is_refused_before_it_is_queued(client, monkeypatch):
    from arvision.serving import app as serving_app

    monkeypatch.setattr(serving_app, "MAX_UPLOAD_PIXELS", 16 * 16 - 1)
    png = _png(PIL.Image.new("RGB", (16, 16)))
    described = client.post("/v1/describe", files={"file": ("a.png", png)}, data={"question": "What?"})
    assert described.status_code == 413 and "decodes to 256 pixels; the limit is 255" in described.text
    body = {"prompt": "a cube", "image": base64.b64encode(png).decode(), "strength": 0.5}
    drawn = client.post("/v1/generate", json=body)
    assert drawn.status_code == 413 and "decodes to 256 pixels" in drawn.text
    assert client.get("/health").json()["queue"]["pending"] == 0
