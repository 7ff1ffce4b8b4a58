"""Server memory under concurrent large uploads: RSS of `captioner serve` idle, at its peak, and afterwards.

Starts `python -m captioner.cli serve` on 127.0.0.1 (a free port) from a checkout (default: this one;
`--checkout DIR` measures another, e.g. `git archive main | tar -x -C /tmp/base` for the code before a
change) with the bundle at --model, or without one a stand-in bundle of the default size with its
captioner.tflite (built once, about a minute). It generates a large PNG or JPEG (default: a 7000x7000 = 49-megapixel
PNG, under the server's 50 MP limit; flat colours, so it is small), then per round sends `--concurrent`
uploads of it at once and samples the server's RSS every 20 ms. Rounds are bounded in count and each
request in time. Targets: peak under 1.5 GB; within 300 MB of idle afterwards; every answer 200 or 503.

    python benchmarks/server_memory.py [--model DIR] [--checkout DIR] [--concurrent 16] [--megapixels 49] [--format PNG] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
PEAK_TARGET_MB = 1536
RETURN_TARGET_MB = 300
SETTLE_S = 3.0


def big_image(megapixels: float, fmt: str = "PNG") -> bytes:
    """A square PNG or JPEG of about `megapixels`: gray with a few coloured bands (it compresses to little)."""
    from PIL import Image, ImageDraw

    side = int(math.sqrt(megapixels * 1e6))
    image = Image.new("RGB", (side, side), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (40, 60, 200)]):
        draw.rectangle([side * i // 4, side // 3, side * (i + 1) // 4, 2 * side // 3], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def small_jpeg() -> bytes:
    """A 500x375 JPEG, the size of a Flickr8k photo."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


class RssSampler:
    """The largest RSS of a process seen since `reset`, sampled every 20 ms on a background thread."""

    def __init__(self, process: psutil.Process):
        self.process = process
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def reset(self) -> None:
        """Start a new peak from the current RSS."""
        self.peak = self.process.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def start_server(model: Path, checkout: Path, port: int, deadline_s: float = 300) -> subprocess.Popen:
    """`captioner serve` from `checkout` on 127.0.0.1:`port`, once /health answers."""
    import httpx

    server = subprocess.Popen(
        [sys.executable, "-m", "captioner.cli", "serve", "--model", str(model), "--port", str(port)],
        cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            return server
        except httpx.TransportError:
            if server.poll() is not None:
                raise RuntimeError(f"captioner serve exited: {server.stderr.read().strip()[-500:]}") from None
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("captioner serve did not answer in time") from None
            time.sleep(0.3)


def post(url: str, data: bytes, name: str, timeout: float) -> int:
    """Status of one POST /api/caption (beam 3); 0 when the request itself failed (connection, timeout)."""
    import httpx

    try:
        files = {"image": (name, data, "application/octet-stream")}
        return httpx.post(f"{url}/api/caption", files=files, data={"beam_size": "3"}, timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/captioner", help="bundle (default: %(default)s, else a stand-in)")
    parser.add_argument("--checkout", default=str(ROOT), help="checkout whose server to run (default: this one)")
    parser.add_argument("--concurrent", type=int, default=16, help="uploads sent at once per round")
    parser.add_argument("--megapixels", type=float, default=49.0, help="size of the uploaded image")
    parser.add_argument("--format", choices=("PNG", "JPEG"), default="PNG", help="its format (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of concurrent uploads (1-10)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each request may take")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 10 or not 1 <= args.concurrent <= 64:
        sys.exit("--rounds must be 1-10 and --concurrent 1-64")

    tmp = Path(tempfile.mkdtemp(prefix="captioner-server-memory-"))
    model = Path(args.model).resolve()
    if not (model / "config.json").is_file():
        from predict import stand_in_bundle  # benchmarks/predict.py: the default-sized untrained bundle

        print(f"{model}: no bundle; building a stand-in bundle of the default size", file=sys.stderr)
        model = stand_in_bundle(tmp / "bundle")
    data = big_image(args.megapixels, args.format)
    checkout = Path(args.checkout).resolve()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = start_server(model, checkout, port)
    process = psutil.Process(server.pid)
    sampler = RssSampler(process)
    rows = []
    try:
        assert post(url, small_jpeg(), "photo.jpg", args.timeout) == 200, "a small photo was not captioned"
        time.sleep(SETTLE_S)
        idle = process.memory_info().rss
        for round_ in range(1, args.rounds + 1):
            sampler.reset()
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                codes = Counter(pool.map(lambda _: post(url, data, f"big.{args.format.lower()}", args.timeout), range(args.concurrent)))
            seconds = time.perf_counter() - start
            time.sleep(SETTLE_S)
            rows.append((round_, sampler.peak, process.memory_info().rss, codes, seconds))
    finally:
        sampler.stop()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"checkout {checkout}; bundle {model}; {args.concurrent} concurrent uploads of a "
          f"{args.megapixels:g}-MP {args.format} ({len(data) / 1024:.0f} KB); RSS of the server process; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"idle (after one small photo): {idle / MB:.0f} MB")
    print("| round | peak RSS (MB) | RSS 3 s after (MB) | after - idle (MB) | 200 | 503 | other | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for round_, peak, after, codes, seconds in rows:
        other = sum(n for code, n in codes.items() if code not in (200, 503))
        print(f"| {round_} | {peak / MB:.0f} | {after / MB:.0f} | {(after - idle) / MB:+.0f} | {codes[200]} | "
              f"{codes[503]} | {other} | {seconds:.1f} |")
        ok &= peak < PEAK_TARGET_MB * MB and after - idle < RETURN_TARGET_MB * MB and other == 0 and codes[200] > 0
    print(f"targets (peak < {PEAK_TARGET_MB} MB, after within {RETURN_TARGET_MB} MB of idle, only 200/503, "
          f"some 200): {'met' if ok else 'MISSED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
