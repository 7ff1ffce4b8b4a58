"""`captioner serve`: a web page and a JSON API over one loaded `Captioner` (FastAPI on uvicorn).

`GET /` the page (upload or drop a photo: caption, other beams, a heatmap per word), `GET /health` the
bundle served, `POST /api/caption` (multipart field `image`, optional `beam_size`) the caption as JSON.
A bad request gets a 4xx JSON `{"error": "..."}` (one line) and the server goes on. The page is fully
offline (no fonts, scripts or analytics from elsewhere); FastAPI's docs pages, which load from a CDN,
are off. Model calls run one at a time in a worker thread, so concurrent requests queue up and the
event loop stays free to accept them.
"""

from __future__ import annotations

import sys
import threading
import time
from importlib import resources
from importlib.metadata import version
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from captioner.serving.api import Captioner
from captioner.core.errors import CaptionerError
from captioner.vision.photos import ImageRejected, read_header

__version__ = version("captioner")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
MAX_BEAM = 10


class ApiError(Exception):
    """A request the API refuses: HTTP status and one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 (by Content-Length or as it streams).

    `limit` is the upload limit plus room for the form's own bytes; the message names the upload limit.
    """

    def __init__(self, app, limit: int, upload_limit: int):
        self.app = app
        self.limit = limit
        self.message = f"upload too large (limit {upload_limit} bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = _error(413, self.message)
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, self.message)
            return message

        return await self.app(scope, limited_receive, send)


def _error(status: int, message: str) -> JSONResponse:
    """The JSON error response: {"error": one line}."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def create_app(
    captioner: Captioner,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_beam: int = MAX_BEAM,
) -> FastAPI:
    """The ASGI app serving `captioner`: page, static files, /health and /api/caption."""
    app = FastAPI(title="captioner", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    web = resources.files("captioner.serving") / "web"
    # Form parsing reads up to this much; a file field a little under the body limit still fits.
    app.add_middleware(BodyLimit, limit=max_upload_bytes + 64 * 1024, upload_limit=max_upload_bytes)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return _error(422, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', 'invalid request')}")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (web / "index.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **captioner.describe(),
                "limits": {"upload_bytes": max_upload_bytes, "pixels": max_pixels, "beam_size": [1, max_beam]}}

    @app.post("/api/caption")
    async def caption(request: Request) -> JSONResponse:
        data, beam = await _read_upload(request, max_upload_bytes, max_beam, captioner.default_beam_size)
        try:
            read_header(data, max_pixels)
        except ImageRejected as exc:
            raise ApiError(413, str(exc)) from exc

        def run() -> tuple[Any, float]:
            with lock:
                start = time.perf_counter()
                result = captioner.caption([data], beam)[0]
                return result, time.perf_counter() - start

        try:
            result, seconds = await run_in_threadpool(run)
        except CaptionerError as exc:
            raise ApiError(415, str(exc).removeprefix("image 0: ")) from exc
        grid = captioner.grid_shape
        return JSONResponse({**result.to_json(), "grid": list(grid) if grid else None, "beam_size": beam,
                             "seconds": round(seconds, 4), "model": captioner.source})

    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    return app


async def _read_upload(request: Request, max_bytes: int, max_beam: int, default_beam: int) -> tuple[bytes, int]:
    """The uploaded image's bytes and the beam size from a multipart form, or an ApiError saying what is wrong."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send the photo as multipart/form-data with the field 'image'")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HTTPException as exc:
        raise ApiError(400, f"malformed form: {exc.detail}") from exc
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "no file in the form field 'image'")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, f"upload too large (limit {max_bytes} bytes)")
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    raw_beam = form.get("beam_size")
    if raw_beam in (None, ""):
        return data, default_beam
    try:
        beam = int(str(raw_beam))
    except ValueError as exc:
        raise ApiError(422, f"beam_size must be a whole number, got {str(raw_beam)[:20]!r}") from exc
    if not 1 <= beam <= max_beam:
        raise ApiError(422, f"beam_size must be between 1 and {max_beam}, got {beam}")
    return data, beam


def warm_up(captioner: Captioner) -> None:
    """Caption a blank image once, so the first request does not pay for tracing the graphs."""
    size = captioner.input_size
    captioner.caption([np.full((size, size, 3), 128, dtype=np.uint8)])


def serve(captioner: Captioner, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Warm the model up and serve until interrupted."""
    import uvicorn

    warm_up(captioner)
    print(f"captioner: serving {captioner.source} on http://{host}:{port}/ (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(create_app(captioner), host=host, port=port, log_level="warning")
