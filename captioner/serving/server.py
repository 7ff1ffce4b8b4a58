"""`captioner serve`: a web page and a JSON API over one loaded `Captioner` (FastAPI on uvicorn).

`GET /` the page (upload or drop a photo: caption, other beams, a heatmap per word), `GET /health` the
bundle served (by its folder name: the page is public, the server's paths are not), `POST /api/caption`
(multipart field `image`, optional `beam_size`) the caption as JSON. A bad request gets a 4xx JSON
`{"error": "..."}` (one line) and the server goes on. The page is fully offline (no fonts, scripts or
analytics from elsewhere); FastAPI's docs pages, which load from a CDN, are off.

Memory stays bounded under concurrent large uploads: one worker thread decodes, squashes and captions the
photos one at a time (`photos.photo_input_reduced`: a large image is reduced while or right after
decoding), at most `max_queue` uploads wait for it (they stay in Starlette's spooled temporary files,
on disk above 1 MB) and one more gets 503. `serve` has glibc return big freed buffers to the system
(`tune_allocator`); without it, each thread's malloc arena kept its peak, gigabytes after a burst of
49-megapixel uploads (docs/server-memory.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from captioner.serving.api import Captioner
from captioner.core.errors import CaptionerError
from captioner.vision.photos import ImageRejected, photo_input_reduced

__version__ = version("captioner")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
MAX_BEAM = 10
MAX_QUEUE = 8  # uploads admitted at once (one being captioned, the rest waiting); more get 503
RETRY_AFTER_S = 2
MMAP_THRESHOLD = 1024 * 1024  # glibc serves allocations from this size up with mmap, and unmaps them on free
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


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
    """The JSON error response: {"error": one line} (503 also says when to retry)."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has mallopt and malloc_trim), else None (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_allocator() -> bool:
    """Have glibc mmap every allocation of `MMAP_THRESHOLD` or more, so freeing it returns it to the system.

    glibc's default threshold rises (up to 32 MB) once such a block is freed, after which Pillow's 16 MB
    image blocks and NumPy's arrays come from per-thread arenas that keep their peak size. Process-wide:
    `serve` calls it before the server starts. False where the C library is not glibc.
    """
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_memory() -> None:
    """Give the malloc arenas' free pages back to the system (glibc's malloc_trim; nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def create_app(
    captioner: Captioner,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_beam: int = MAX_BEAM,
    max_queue: int = MAX_QUEUE,
) -> FastAPI:
    """The ASGI app serving `captioner`: page, static files, /health and /api/caption.

    Photos are decoded and captioned one at a time on the app's own worker thread; `max_queue` uploads may
    be admitted at once, one more gets 503.
    """
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-worker")
    admitted = 0  # uploads handed to the worker and not yet answered; read and changed on the event loop only

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="captioner", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    name = _bundle_name(captioner.source)
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

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    def page() -> str:
        return (web / "index.html").read_text(encoding="utf-8")

    @app.api_route("/health", methods=["GET", "HEAD"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **captioner.describe(), "model": name,
                "limits": {"upload_bytes": max_upload_bytes, "pixels": max_pixels, "beam_size": [1, max_beam],
                           "queue": max_queue}}

    def run(upload: UploadFile, beam: int) -> tuple[Any, float]:
        """On the worker: read the spooled upload, decode it (bounded), caption it; ApiError if it is no photo."""
        start = time.perf_counter()
        upload.file.seek(0)
        data = upload.file.read(max_upload_bytes + 1)
        try:
            inputs = photo_input_reduced(data, captioner.input_size, max_pixels)
            result = captioner.caption_inputs(inputs[None], beam)[0]
        except ImageRejected as exc:
            raise ApiError(413, str(exc)) from exc
        except CaptionerError as exc:
            raise ApiError(415, str(exc)) from exc
        finally:
            release_memory()
        return result, time.perf_counter() - start

    @app.post("/api/caption")
    async def caption(request: Request) -> JSONResponse:
        nonlocal admitted
        upload, beam = await _read_upload(request, max_upload_bytes, max_beam, captioner.default_beam_size)
        if admitted >= max_queue:
            raise ApiError(503, f"server busy: {max_queue} photos are being captioned or waiting; try again shortly")
        admitted += 1
        try:
            result, seconds = await asyncio.get_running_loop().run_in_executor(worker, run, upload, beam)
        finally:
            admitted -= 1
        grid = captioner.grid_shape
        return JSONResponse({**result.to_json(), "grid": list(grid) if grid else None, "beam_size": beam,
                             "seconds": round(seconds, 4), "model": name})

    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    return app


def _bundle_name(source: str) -> str:
    """What the page and /health call the bundle: its folder's name, never the server's path to it."""
    return Path(source).resolve().name or "model"


async def _read_upload(request: Request, max_bytes: int, max_beam: int,
                       default_beam: int) -> tuple[UploadFile, int]:
    """The uploaded file (spooled by Starlette, not yet read) and the beam size from a multipart form, or an
    ApiError saying what is wrong."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send the photo as multipart/form-data with the field 'image'")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HTTPException as exc:
        raise ApiError(400, f"malformed form: {exc.detail}") from exc
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "no file in the form field 'image'")
    if upload.size is not None and upload.size > max_bytes:
        raise ApiError(413, f"upload too large (limit {max_bytes} bytes)")
    if not upload.size:
        raise ApiError(400, "the uploaded file is empty")
    raw_beam = form.get("beam_size")
    if raw_beam in (None, ""):
        return upload, default_beam
    try:
        beam = int(str(raw_beam))
    except ValueError as exc:
        raise ApiError(422, f"beam_size must be a whole number, got {str(raw_beam)[:20]!r}") from exc
    if not 1 <= beam <= max_beam:
        raise ApiError(422, f"beam_size must be between 1 and {max_beam}, got {beam}")
    return upload, beam


def warm_up(captioner: Captioner) -> None:
    """Caption a blank image once, so the first request does not pay for tracing the graphs."""
    size = captioner.input_size
    captioner.caption([np.full((size, size, 3), 128, dtype=np.uint8)])


def serve(captioner: Captioner, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Tune the allocator, warm the model up and serve until interrupted."""
    import uvicorn

    tune_allocator()
    warm_up(captioner)
    print(f"captioner: serving {captioner.source} on http://{host}:{port}/ (Ctrl+C stops)", file=sys.stderr)
    uvicorn.run(create_app(captioner), host=host, port=port, log_level="warning")
