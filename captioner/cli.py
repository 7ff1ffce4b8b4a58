"""The `captioner` command: `captioner predict IMAGE... [--explain OUT_DIR]`, `captioner serve` and
`captioner ensemble MEMBER_DIR... --out DIR` (one bundle that averages several decoders).

Arguments are parsed and the bundle's config read before TensorFlow is imported, so usage errors are
instant; then everything goes through the Python API (`captioner.serving.api.Captioner`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from captioner.serving.api import RUNTIMES
from captioner.core.errors import CaptionerError, printable

if TYPE_CHECKING:
    from captioner.serving.api import Caption, Captioner

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
EAGER_MAX_IMAGES = 4  # up to this many images, running the models eagerly beats tracing their graphs
UNUSED_MODULES = ("IPython", "matplotlib.pyplot")  # Keras imports them at start-up if installed; we use neither
RUNTIME_HELP = ("litert: the bundle's captioner.tflite, no TensorFlow (fast start); keras: the Keras decoder on "
                "TensorFlow; auto (default): litert when the bundle has the file")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands `predict`, `serve` and `ensemble`)."""
    parser = argparse.ArgumentParser(prog="captioner", description="Caption photos with a trained captioner bundle.")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="caption images (files or folders of JPEG/PNG)")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    predict.add_argument("--model", default="models/captioner", help="model bundle folder (default: %(default)s)")
    predict.add_argument("--beam-size", type=int, default=None, help="beam width (1 = greedy; default: the bundle's)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per encoder batch (default: %(default)s)")
    predict.add_argument("--json", action="store_true",
                         help="print a JSON list of {image, caption, log_prob, score, alternatives}")
    predict.add_argument("--explain", metavar="OUT_DIR", default=None,
                         help="also write OUT_DIR/<image stem>.png: the photo, its caption and a heatmap per word")
    predict.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    serve = sub.add_parser("serve", help="a web page and a JSON API that caption uploaded photos")
    serve.add_argument("--model", default="models/captioner", help="model bundle folder (default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    serve.add_argument("--runtime", choices=RUNTIMES, default="auto", help=RUNTIME_HELP)
    ensemble = sub.add_parser("ensemble", help="build one bundle that averages the decoders of several bundles")
    ensemble.add_argument("members", nargs="+", metavar="MEMBER_DIR",
                          help="model bundle folders of one vocabulary and encoder (e.g. trained with other seeds)")
    ensemble.add_argument("--out", required=True, metavar="DIR", help="the ensemble bundle folder to write")
    ensemble.add_argument("--no-litert", dest="litert", action="store_false",
                          help="leave out captioner.tflite (the LiteRT runtime's file)")
    ensemble.add_argument("--length-alpha", type=float, metavar="ALPHA",
                          help="rank finished beams by log p / length^ALPHA (default: the first member's)")
    ensemble.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                          help="read each image as it is and mirrored, probabilities averaged (default: the first "
                               "member's)")
    return parser


def expand_inputs(args: Sequence[str]) -> tuple[list[Path], dict[str, str]]:
    """Files as given and image files inside folders (sorted); missing paths come back as errors."""
    paths: list[Path] = []
    errors: dict[str, str] = {}
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors[arg] = "folder holds no JPEG/PNG images"
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            errors[arg] = "file not found"
    unique = list(dict.fromkeys(paths))
    return unique, errors


def load_captioner(model_dir: str, compiled: bool = True, runtime: str = "auto") -> Captioner:
    """The bundle's Captioner; TensorFlow's C++ start-up lines are kept off the terminal (LiteRT needs no TensorFlow)."""
    from captioner.serving.api import Captioner

    captioner = Captioner.load(model_dir, compiled=compiled, runtime=runtime)
    if captioner.lite is None:
        from captioner.core.native_logs import quiet_native_stderr

        with quiet_native_stderr():
            import tensorflow as tf

            tf.zeros(1)  # device set-up logs its CUDA probing here
    return captioner


def _skip_unused_imports() -> None:
    """Keep Keras from importing IPython and pyplot (about 0.5 s of start-up): the command uses neither."""
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)  # a None entry makes `import name` raise ImportError, which Keras expects


def write_explanations(out_dir: Path, paths: list[Path], results: dict[int, Caption]) -> dict[int, str]:
    """One figure per captioned image into `out_dir`; returns {index: why its figure failed}."""
    from captioner.serving.explain import explanation_figure, explanation_paths, load_photo, save_figure

    failed: dict[int, str] = {}
    for i, target in enumerate(explanation_paths(paths, out_dir)):
        if i in results:
            try:
                save_figure(explanation_figure(load_photo(paths[i]), results[i], paths[i].name), target)
            except OSError as exc:
                failed[i] = f"cannot write {target} ({exc.strerror or exc})"
    return failed


def run_predict(args: argparse.Namespace) -> int:
    """Caption the images; print results on stdout and one error line per bad image on stderr. Exit status."""
    from captioner.model.bundle import read_config

    read_config(args.model)  # a missing or broken bundle fails before any image work
    if args.batch_size < 1:
        raise CaptionerError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.beam_size is not None and args.beam_size < 1:
        raise CaptionerError(f"--beam-size must be at least 1, got {args.beam_size}")
    if args.explain is not None and Path(args.explain).exists() and not Path(args.explain).is_dir():
        raise CaptionerError(f"--explain {args.explain}: exists and is not a folder")
    paths, errors = expand_inputs(args.images)
    results: dict[int, Caption] = {}
    if paths:
        captioner = load_captioner(args.model, compiled=len(paths) > EAGER_MAX_IMAGES, runtime=args.runtime)
        results, failed = captioner.caption_files(paths, args.beam_size, args.batch_size)
        if args.explain is not None:
            failed.update(write_explanations(Path(args.explain), paths, results))
        errors.update({str(paths[i]): (reason.strip().splitlines() or ["not a readable image"])[0]
                       for i, reason in failed.items()})
    if args.json:
        print(json.dumps([{"image": str(p), **results[i].to_json(attention=False)}
                          for i, p in enumerate(paths) if i in results], indent=2))
    else:
        for i, p in enumerate(paths):
            if i in results:
                print(f"{printable(str(p))}\t{results[i].caption}")
    for path, reason in errors.items():
        print(f"error: {printable(f'{path}: {reason}')}", file=sys.stderr)
    return 1 if errors else 0


def run_serve(args: argparse.Namespace) -> int:
    """Serve the web page and the JSON API until interrupted."""
    from captioner.model.bundle import read_config

    read_config(args.model)
    if not 0 < args.port < 65536:
        raise CaptionerError(f"--port must be 1-65535, got {args.port}")
    from captioner.serving.server import serve

    serve(load_captioner(args.model, runtime=args.runtime), args.host, args.port)
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    """Write an ensemble bundle of the member bundles (their configs checked before TensorFlow loads); one line."""
    from captioner.model.ensemble import assemble

    config = assemble(args.members, args.out, litert=args.litert, length_alpha=args.length_alpha, flip=args.flip)
    what = f"an ensemble of {len(args.members)}" if len(args.members) > 1 else "one"
    lite = ", with captioner.tflite" if args.litert else ""
    views = ", reading each image as it is and mirrored" if config["decoding"].get("flip") else ""
    print(f"wrote {printable(args.out)}: {what} {config['decoder']['kind']} decoder"
          f"{'s' if len(args.members) > 1 else ''}, {config['decoder']['vocab_size']} tokens{views}{lite}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`captioner = captioner.cli:main`).

    Run from the command line (argv None), it ends with os._exit once output is flushed: TensorFlow's
    interpreter teardown costs about a second and there is nothing left to clean up.
    """
    from captioner.core.stage import run_main

    args = build_parser().parse_args(argv)
    if argv is None:  # a process of its own: nothing else will want IPython or pyplot
        _skip_unused_imports()
    status: list[int] = []
    try:
        command = {"serve": run_serve, "ensemble": run_ensemble}.get(args.command, run_predict)
        run_main(lambda: status.append(command(args)))
        code = status[0] if status else 1
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
