"""The `captioner` command: `captioner predict IMAGE... [--model DIR] [--beam-size N] [--json]`.

Arguments are parsed and the bundle's config read before TensorFlow is imported, so usage errors are
instant; the encoder is rebuilt from the bundle's config and every image is captioned in one batch run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from captioner.errors import CaptionerError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommand `predict`)."""
    parser = argparse.ArgumentParser(prog="captioner", description="Caption photos with a trained captioner bundle.")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="caption images (files or folders of JPEG/PNG)")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    predict.add_argument("--model", default="models/captioner", help="model bundle folder (default: %(default)s)")
    predict.add_argument("--beam-size", type=int, default=None, help="beam width (1 = greedy; default: the bundle's)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per encoder batch (default: %(default)s)")
    predict.add_argument("--json", action="store_true", help="print a JSON list of {image, caption}")
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


def predict(paths: list[Path], model_dir: str, beam_size: int | None, batch_size: int) -> tuple[dict[str, str], dict[str, str]]:
    """Caption `paths` with the bundle in `model_dir`: ({path: caption}, {path: why it failed})."""
    from captioner.bundle import read_config

    config = read_config(model_dir)
    with _quiet_native_stderr():
        import tensorflow as tf

        tf.zeros(1)  # device set-up logs its CUDA probing here
    from captioner.bundle import load_bundle
    from captioner.evaluation import caption_features
    from captioner.features import extract_features

    bundle = load_bundle(model_dir)
    beam = int(beam_size if beam_size is not None else config["decoding"]["beam_size"])
    if beam < 1:
        raise CaptionerError(f"--beam-size must be at least 1, got {beam}")
    enc = config["encoder"]
    done: dict[str, str] = {}
    failed: dict[str, str] = {}
    for group in _unique_name_groups(paths):
        names, features, skipped = extract_features(
            group, enc["name"], enc["weights"], enc["output"], batch_size, progress=len(group) > 64
        )
        if len(names) and tuple(features.shape[1:]) != bundle.feature_shape:
            raise CaptionerError(
                f"{model_dir}: encoder {enc['name']} gives features {tuple(features.shape[1:])} "
                f"but the decoder was trained on {bundle.feature_shape}"
            )
        captions = caption_features(bundle, features, beam, progress=False) if len(names) else []
        by_name = {p.name: str(p) for p in group}
        done.update({by_name[n]: c for n, c in zip(names, captions)})
        failed.update({by_name[n]: (reason.strip().splitlines() or ["not a readable image"])[0] for n, reason in skipped.items()})
    return done, failed


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a moment: TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _unique_name_groups(paths: list[Path]) -> list[list[Path]]:
    """Split paths into as few groups as possible whose file names are unique (features are keyed by name)."""
    groups: list[list[Path]] = []
    seen: list[set[str]] = []
    for p in paths:
        for group, names in zip(groups, seen):
            if p.name not in names:
                group.append(p)
                names.add(p.name)
                break
        else:
            groups.append([p])
            seen.append({p.name})
    return groups


def run_predict(args: argparse.Namespace) -> int:
    """Caption the images; print results on stdout and one error line per bad image on stderr. Exit status."""
    from captioner.bundle import read_config

    read_config(args.model)  # a missing or broken bundle fails before any image work
    if args.batch_size < 1:
        raise CaptionerError(f"--batch-size must be at least 1, got {args.batch_size}")
    paths, errors = expand_inputs(args.images)
    captions: dict[str, str] = {}
    if paths:
        captions, failed = predict(paths, args.model, args.beam_size, args.batch_size)
        errors.update(failed)
    order = [str(p) for p in paths]
    if args.json:
        print(json.dumps([{"image": p, "caption": captions[p]} for p in order if p in captions], indent=2))
    else:
        for p in order:
            if p in captions:
                print(f"{p}\t{captions[p]}")
    for path, reason in errors.items():
        print(f"error: {path}: {reason}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (`captioner = captioner.cli:main`).

    Run from the command line (argv None), it ends with os._exit once output is flushed: TensorFlow's
    interpreter teardown costs about a second and there is nothing left to clean up.
    """
    from captioner.stage import run_main

    args = build_parser().parse_args(argv)
    status: list[int] = []
    try:
        run_main(lambda: status.append(run_predict(args)))
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
