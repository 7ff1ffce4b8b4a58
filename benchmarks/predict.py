"""Prediction speed: one photo from command start, warm latency through the server, images/s, decoding.

Both runtimes, in the same run: LiteRT (the bundle's captioner.tflite, no TensorFlow; what `captioner
predict` and `serve` use when the file is there) and Keras on TensorFlow (`--runtime keras`).
Uses the bundle at --model (default models/captioner); without one, a stand-in bundle (efficientnet_lite0
ImageNet encoder, untrained attention decoder of the default size, 2900-word vocabulary) has the same cost.
`--baseline DIR` also times `captioner predict` from another checkout (e.g. `git worktree add /tmp/base main`)
in the same run, for a ratio that does not depend on how busy the machine is.

    python benchmarks/predict.py [--model DIR] [--photo FILE] [--folder DIR] [--images 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "flickr8k"
COLD_TARGET_S = 3.0
WARM_TARGET_S = 0.100


def stand_in_bundle(directory: Path) -> Path:
    """An untrained bundle shaped like the default Flickr8k one (timing only; captions are nonsense).

    An untrained decoder never says <end>, so its captions are capped at 13 words: a trained Flickr8k
    model's beams end after about 12, and each word is one decoding step.
    """
    from captioner.model.bundle import make_config, save_bundle
    from captioner.vision.encoders import build_encoder
    from captioner.model.decoders import DecoderSpec, build_decoder
    from captioner.core.params import DEFAULTS
    from captioner.data.text import RESERVED, Vocabulary

    p = DEFAULTS["train"]
    grid = (7, 7, 1280)
    vocab = Vocabulary(tokens=(*RESERVED, *(f"w{i}" for i in range(2896))), max_length=15)
    model = build_decoder(DecoderSpec("attention", len(vocab), grid, p["embedding_dim"], p["units"], p["dropout"],
                                      p["attention_heads"], p["output_units"]))
    config = make_config(
        {"name": "efficientnet_lite0", "weights": "imagenet", "input_size": 224, "output": "grid"},
        grid,
        {"kind": "attention", "embedding_dim": p["embedding_dim"], "units": p["units"], "dropout": p["dropout"],
         "vocab_size": len(vocab)},
        {"beam_size": 3, "max_length": 15, "length_alpha": 1.0},
    )
    save_bundle(directory, model, vocab, config, build_encoder("efficientnet_lite0", "imagenet", "grid"))
    return directory


def default_photos(tmp: Path, count: int) -> list[Path]:
    """Real photos from ../shared/flickr8k when present, else synthetic 500x375 JPEGs."""
    for folder in (SHARED / "Images", SHARED / "photos"):
        if folder.is_dir():
            found = sorted(folder.glob("*.jpg"))[:count]
            if found:
                return found
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = tmp / f"photo{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def timed_runs(cmds: list[tuple[list[str], Path]], repeats: int) -> list[tuple[float, float]]:
    """Per (command, PYTHONPATH): median wall seconds and median CPU seconds (user + system).

    The commands take turns, round after round, so a change in how busy the machine is hits them alike.
    """
    walls: list[list[float]] = [[] for _ in cmds]
    cpus: list[list[float]] = [[] for _ in cmds]
    for _ in range(repeats):
        for i, (cmd, pythonpath) in enumerate(cmds):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            # run from the checkout: `python -m` puts the working folder first on sys.path
            subprocess.run(cmd, check=True, capture_output=True, cwd=pythonpath,
                           env={**os.environ, "PYTHONPATH": str(pythonpath)})
            walls[i].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[i].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return [(statistics.median(w), statistics.median(c)) for w, c in zip(walls, cpus)]


def predict_cmd(model: Path, *images: Path, runtime: str = "auto") -> list[str]:
    """`captioner predict IMAGES --model MODEL --runtime RUNTIME` as a fresh Python process."""
    return [sys.executable, "-m", "captioner.cli", "predict", *map(str, images), "--model", str(model),
            "--runtime", runtime]


def server_latency(model: Path, photo: Path, repeats: int) -> tuple[float, int]:
    """Median seconds of one POST /api/caption (beam 3) to a warm `captioner serve` process; 8-way all-200 count."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "captioner.cli", "serve", "--model", str(model), "--port", str(port)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = photo.read_bytes()
    try:
        with httpx.Client(timeout=60) as client:
            while True:
                try:
                    client.get(f"{url}/health")
                    break
                except httpx.TransportError:
                    if server.poll() is not None:
                        raise RuntimeError("captioner serve exited before answering") from None
                    time.sleep(0.2)

            def post() -> int:
                files = {"image": (photo.name, data, "image/jpeg")}
                return client.post(f"{url}/api/caption", files=files, data={"beam_size": "3"}).status_code

            post()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                assert post() == 200
                times.append(time.perf_counter() - start)
            with ThreadPoolExecutor(8) as pool:
                answered = sum(code == 200 for code in pool.map(lambda _: post(), range(8)))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    return statistics.median(times), answered


def api_latency(captioner, photo: Path, repeats: int) -> float:
    """Median seconds of `Captioner.caption(photo bytes, beam_size=3)` in this process, after a warm-up."""
    data = photo.read_bytes()
    captioner.caption([data], beam_size=3)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        captioner.caption([data], beam_size=3)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/captioner")
    parser.add_argument("--photo", default=None, help="photo for the single-image timings")
    parser.add_argument("--folder", default=None, help="folder for images/s (default: Flickr8k images or synthetic)")
    parser.add_argument("--images", type=int, default=200, help="images from the folder")
    parser.add_argument("--decode-images", type=int, default=1000, help="images for the decoding-only timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", default=None, help="another checkout whose `captioner predict` to time too")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="captioner-bench-"))
    model = Path(args.model).resolve()
    if not (model / "config.json").is_file():
        print(f"{model}: no bundle; timing a stand-in bundle of the default size", file=sys.stderr)
        model = stand_in_bundle(tmp / "bundle")
    folder_paths = sorted(Path(args.folder).resolve().iterdir())[: args.images] if args.folder else default_photos(tmp, args.images)
    photo = Path(args.photo).resolve() if args.photo else (sorted((SHARED / "photos").glob("*.jpg")) or folder_paths)[0]

    from captioner.serving.api import Captioner
    from captioner.model.litert import LITERT_FILE

    if not (model / LITERT_FILE).is_file():
        sys.exit(f"{model}: no {LITERT_FILE} (a bundle from before LiteRT export): retrain, or time a stand-in bundle")
    load = os.getloadavg()[0]
    floor_cmd = [sys.executable, "-c", "import os, tensorflow; os._exit(0)"]  # no teardown, like the CLI
    cmds = [(predict_cmd(model, photo, runtime="litert"), ROOT), (predict_cmd(model, photo, runtime="keras"), ROOT),
            (floor_cmd, ROOT)]
    if args.baseline:
        cmds.append((predict_cmd(model, photo, runtime="keras"), Path(args.baseline)))
    (cold, cold_cpu), (cold_keras, cold_keras_cpu), (floor, floor_cpu), *rest = timed_runs(cmds, args.repeats)
    base = rest[0] if rest else None
    warm_http, answered = server_latency(model, photo, max(args.repeats, 20))

    runtimes = {name: Captioner.load(model, runtime=name) for name in ("litert", "keras")}
    warm_api = {name: api_latency(c, photo, max(args.repeats, 20)) for name, c in runtimes.items()}
    beam = runtimes["litert"].default_beam_size
    folder_rates: dict[str, list[float]] = {name: [] for name in runtimes}
    for name, captioner in runtimes.items():
        captioner.caption_files(folder_paths[:2], beam)  # warm-up traces
        for _ in range(min(args.repeats, 3)):
            start = time.perf_counter()
            captioner.caption_files(folder_paths, beam)
            folder_rates[name].append(len(folder_paths) / (time.perf_counter() - start))
    [(cli_s, _)] = timed_runs([(predict_cmd(model, *folder_paths), ROOT)], 1)

    bundle = runtimes["keras"].bundle
    rng = np.random.default_rng(0)
    feats = rng.random((args.decode_images, *bundle.feature_shape), dtype=np.float32).astype(np.float16)
    decode_s = {}
    for name, captioner in runtimes.items():
        captioner.caption_features(feats[:8], beam)
        times = []
        for _ in range(min(args.repeats, 3)):
            start = time.perf_counter()
            captioner.caption_features(feats, beam)
            times.append(time.perf_counter() - start)
        decode_s[name] = statistics.median(times)

    enc = bundle.config["encoder"]
    print(f"bundle {model} ({bundle.decoder_kind}, vocab {len(bundle.vocab)}, encoder {enc['name']} {enc['output']}); "
          f"beam {beam}; photo {photo.name}; medians; load average {load:.1f} on {os.cpu_count()} CPUs at start")
    rows = [
        ("`captioner predict one.jpg` (LiteRT), command start to exit (s)", cold, COLD_TARGET_S),
        ("  the same, CPU time user+system (s)", cold_cpu, None),
        ("  `--runtime keras` (TensorFlow), command start to exit (s)", cold_keras, None),
        ("  `--runtime keras`, CPU time (s)", cold_keras_cpu, None),
        ("  floor of the keras runtime: `import tensorflow` alone (s)", floor, None),
        ("  that floor, CPU time (s)", floor_cpu, None),
        *([("  baseline checkout (keras), command start to exit (s)", base[0], None),
           ("  baseline checkout (keras), CPU time (s)", base[1], None)] if base else []),
        ("warm latency, `captioner serve`: POST /api/caption, one photo, beam 3 (s)", warm_http, WARM_TARGET_S),
        ("  in process: Captioner.caption, LiteRT (s)", warm_api["litert"], WARM_TARGET_S),
        ("  in process: Captioner.caption, Keras (s)", warm_api["keras"], WARM_TARGET_S),
        ("  8 concurrent requests: answered with 200", answered, None),
        (f"folder of {len(folder_paths)} images, in process, LiteRT (images/s)", statistics.median(folder_rates["litert"]), None),
        (f"folder of {len(folder_paths)} images, in process, Keras (images/s)", statistics.median(folder_rates["keras"]), None),
        (f"folder of {len(folder_paths)} images, `captioner predict` (images/s)", len(folder_paths) / cli_s, None),
        (f"decode {args.decode_images} images' features, beam {beam}, LiteRT (s)", decode_s["litert"], 60.0),
        (f"decode {args.decode_images} images' features, beam {beam}, Keras (s)", decode_s["keras"], 60.0),
    ]
    print(f"{'measure':<72}{'median':>10}{'target':>10}{'ratio':>8}")
    for label, value, target in rows:
        ratio = f"{value / target:.2f}" if target else ""
        print(f"{label:<72}{value:>10.3f}{(f'{target:g}' if target else ''):>10}{ratio:>8}")
    if base:
        print(f"cold start vs baseline checkout: {cold / base[0]:.2f}x wall, {cold_cpu / base[1]:.2f}x CPU")
    print(f"cold start, LiteRT vs Keras runtime: {cold_keras / cold:.1f}x faster")


if __name__ == "__main__":
    main()
