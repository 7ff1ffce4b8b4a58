"""`captioner serve`: page, /health, /api/caption JSON, 4xx JSON errors that leave the server serving, concurrency,
the bounded queue (503), no filesystem paths shown."""

import io
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("keras")
httpx = pytest.importorskip("httpx")

from helpers_bundle import make_bundle, make_photo  # noqa: E402
from helpers_server import running_server  # noqa: E402

UPLOAD_LIMIT = 300_000
PIXEL_LIMIT = 1_000_000


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from captioner.serving.api import Captioner
    from captioner.serving.server import warm_up

    captioner = Captioner.load(make_bundle(tmp_path_factory.mktemp("serve") / "captioner", litert=True))
    warm_up(captioner)
    return captioner


@pytest.fixture(scope="module")
def server(loaded):
    from captioner.serving.server import create_app

    with running_server(create_app(loaded, max_upload_bytes=UPLOAD_LIMIT, max_pixels=PIXEL_LIMIT)) as url:
        yield url


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_photo(tmp_path_factory.mktemp("photo") / "photo.jpg").read_bytes()


def post(url, data=None, beam=None, name="photo.jpg", **kwargs):
    files = None if data is None else {"image": (name, data, "application/octet-stream")}
    form = {} if beam is None else {"beam_size": str(beam)}
    return httpx.post(f"{url}/api/caption", files=files, data=form, timeout=60, **kwargs)


def test_page_and_health(server):
    page = httpx.get(server)
    assert page.status_code == 200 and 'id="drop"' in page.text and "/static/app.js" in page.text
    assert httpx.get(f"{server}/static/app.js").status_code == 200
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == "captioner"
    assert health["decoder"] == "attention" and health["encoder"] == "efficientnet_lite0 grid"


def test_head_requests_are_answered(server):
    for path in ("/", "/health"):
        response = httpx.head(f"{server}{path}")
        assert response.status_code == 200 and response.content == b"", path


def test_no_filesystem_path_is_shown(server, loaded, photo):
    folder = str(loaded.source)
    assert folder.startswith("/") and folder.endswith("/captioner")
    health = httpx.get(f"{server}/health")
    answer = post(server, photo)
    assert health.json()["model"] == "captioner" and answer.json()["model"] == "captioner"
    for text in (health.text, answer.text, httpx.get(server).text, httpx.get(f"{server}/static/app.js").text):
        assert folder not in text and str(Path(folder).parent) not in text


def test_web_files_fetch_nothing_from_the_internet():
    web = resources.files("captioner.serving") / "web"
    for name in ("index.html", "app.js", "style.css"):
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", (web / name).read_text()), name


def test_caption_returns_caption_beams_and_attention(server, photo):
    response = post(server, photo, beam=3)
    assert response.status_code == 200
    body = response.json()
    assert body["caption"] == " ".join(body["words"]) and body["beam_size"] == 3
    assert len(body["alternatives"]) == 2 and all(alt["log_prob"] < 0 for alt in body["alternatives"])
    scores = [body["score"], *(alt["score"] for alt in body["alternatives"])]
    assert scores == sorted(scores, reverse=True)  # ranked by the length-normalised score, which the page shows
    assert body["grid"] == [7, 7] and len(body["attention"]) == len(body["words"])
    np.testing.assert_allclose(np.sum(body["attention"], axis=(1, 2)), 1.0, atol=1e-3)
    assert post(server, photo).json()["beam_size"] == 3  # the bundle's default


def png(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "case, status, message",
    [
        ("not an image", 415, "not an image"),
        ("empty", 400, "empty"),
        ("no file", 400, "no file"),
        ("too large", 413, "upload too large"),
        ("too many pixels", 413, "decompression bomb"),
        ("beam 0", 422, "between 1 and 10"),
        ("beam 11", 422, "between 1 and 10"),
        ("beam word", 422, "whole number"),
        ("not multipart", 415, "multipart"),
    ],
)
def test_bad_requests_get_a_json_error_and_the_server_goes_on(server, photo, case, status, message):
    requests = {
        "not an image": lambda: post(server, b"just some text\n", name="notes.txt"),
        "empty": lambda: post(server, b""),
        "no file": lambda: httpx.post(f"{server}/api/caption", files={"other": ("a", b"x")}, timeout=60),
        "too large": lambda: post(server, b"\xff" * (UPLOAD_LIMIT + 1)),
        "too many pixels": lambda: post(server, png(1200, 1000), name="bomb.png"),  # 1.2 MP, a few KB
        "beam 0": lambda: post(server, photo, beam=0),
        "beam 11": lambda: post(server, photo, beam=11),
        "beam word": lambda: post(server, photo, beam="three"),
        "not multipart": lambda: httpx.post(f"{server}/api/caption", json={"image": "x"}, timeout=60),
    }
    response = requests[case]()
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "\n" not in error
    assert post(server, photo, beam=1).status_code == 200  # still serving


def test_eight_concurrent_requests_are_all_answered(server, photo):
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda beam: post(server, photo, beam=beam), [1, 2, 3, 4, 1, 2, 3, 4]))
    assert [r.status_code for r in responses] == [200] * 8
    by_beam = {}
    for beam, r in zip([1, 2, 3, 4, 1, 2, 3, 4], responses):
        by_beam.setdefault(beam, set()).add(r.json()["caption"])
    assert all(len(captions) == 1 for captions in by_beam.values())  # same answer as when alone


def test_an_ordinary_photo_gets_the_same_caption_as_from_the_api(server, loaded, photo):
    expected = loaded.caption([photo], 3)[0]
    body = post(server, photo, beam=3).json()
    assert body["caption"] == expected.caption and body["log_prob"] == pytest.approx(expected.log_prob, abs=1e-4)


def test_a_full_queue_answers_503_with_one_line_and_the_server_recovers(loaded, photo, monkeypatch):
    from captioner.serving.server import create_app

    entered, release = threading.Event(), threading.Event()
    real = loaded.caption_inputs

    def held(inputs, beam_size=None):
        entered.set()
        assert release.wait(30)
        return real(inputs, beam_size)

    monkeypatch.setattr(loaded, "caption_inputs", held)
    with running_server(create_app(loaded, max_queue=1)) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, url, photo)
        assert entered.wait(30)  # the one admitted upload is on the worker
        busy = post(url, photo)
        release.set()
        assert first.result().status_code == 200
        assert busy.status_code == 503 and busy.headers["retry-after"].isdigit()
        error = busy.json()["error"]
        assert error.startswith("server busy") and "\n" not in error
        assert post(url, photo).status_code == 200  # the queue drained


def test_captioner_serve_command_serves_until_interrupted(tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    bundle = make_bundle(tmp_path / "captioner", kind="merge", weights="none")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "captioner.cli", "serve", "--model", str(bundle), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
                time.sleep(0.5)
        assert health["model"] == "captioner" and health["decoder"] == "merge" and health["attention"] is False
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert f"serving {bundle} on http://127.0.0.1:{port}/" in err
