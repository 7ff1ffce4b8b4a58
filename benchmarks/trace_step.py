"""Where the real training step of the default decoder spends its time, op by op (TensorFlow's profiler).

`profile_step.py` times each part alone on made-up tensors; this script traces the whole step as the
train stage runs it (the same model, loss, optimizer, precision and batches as a row of `train.py`), then
adds up the time of every op TensorFlow ran, by the part of the model the op belongs to. Op time is summed
over TensorFlow's compute threads, so the parts add up to more than the wall time of a step; the shares
are what to compare. The LSTM is split into its forward loop and its backward loop (backpropagation
through time), with the backward loop's op kinds listed below the table.

    python benchmarks/trace_step.py [--batches 20] [--data .] [--row "+ bfloat16 (default)"]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

from train import VARIANTS, build, load

WARMUP = 8  # untraced batches first: tracing and oneDNN kernel creation for the common caption widths
# layer name (in the op's name) -> part of the step
PARTS = {
    "image side": ("flatten_grid", "grid_values", "grid_keys", "grid_mean", "global_proj", "init_h", "init_c",
                   "image_dropout", "per_caption"),
    "words in": ("embedding", "embedding_dropout", "word_image"),
    "attention": ("attend", "merge"),
    "output projection": ("hidden", "output_dropout", "logits", "logits_float32", "pack"),
}
LAYER = re.compile(r"captioner_attention(?:_\d+)?/([a-z0-9_]+?)(?:_\d+)?/")


def part_of(op: str) -> str | None:
    """The part of the step an op's name belongs to (None: executor bookkeeping, not an op)."""
    if op.startswith("ExecutorState") or op == "ParallelFor":
        return None
    if "compile_loss" in op:
        return "loss"
    if "random" in op.lower():
        return "dropout masks (random numbers)"
    found = LAYER.search(op)
    layer = found.group(1) if found else ""
    if layer == "lstm":
        return "LSTM backward (through time)" if "while_grad" in op else "LSTM forward"
    for part, names in PARTS.items():
        if layer in names:
            return part
    if "adam" in op.lower() or "Assign" in op:
        return "optimizer (Adam)"
    return "other"


def op_kind(op: str) -> str:
    """An op's type (MatMul, Cast, ...) from its trace name `scope/name:Type`."""
    kind = op.rsplit(":", 1)[-1]
    return re.sub(r"^_Mkl(Native)?", "", kind)  # oneDNN's variants (_MklMatMul, _MklNativeFusedMatMul) by their op


def trace(model, dataset, batches: int, logdir: str) -> float:
    """Train WARMUP batches, then `batches` more under the profiler; return the traced wall seconds per step."""
    import tensorflow as tf

    it = iter(dataset.repeat())
    for _ in range(WARMUP):
        (x, t), y = next(it)
        model.train_on_batch([x, t], y)
    staged = [next(it) for _ in range(batches)]  # read before tracing: the trace holds the step alone
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for (x, t), y in staged:
        model.train_on_batch([x, t], y)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    return wall / batches


def op_times(logdir: str) -> collections.Counter:
    """Seconds per op name, summed over the trace's TensorFlow compute threads."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:
        sys.exit("error: this TensorFlow has no tensorflow.tsl.profiler.protobuf.xplane_pb2 to read its trace with")
    files = sorted(Path(logdir).rglob("*.xplane.pb"))
    if not files:
        sys.exit(f"error: the profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    seconds: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):
                for event in line.events:
                    seconds[plane.event_metadata[event.metadata_id].name] += event.duration_ps * 1e-12
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="traced batches")
    parser.add_argument("--data", default=None, help="project root with data/features and data/processed")
    rows = [label for label, variant in VARIANTS.items() if variant is not None]
    parser.add_argument("--row", default="+ bfloat16 (default)", choices=rows, help="a row of train.py to trace")
    args = parser.parse_args()

    model, dataset = build(load(args.data), VARIANTS[args.row])
    with tempfile.TemporaryDirectory() as logdir:
        wall = trace(model, dataset, args.batches, logdir)
        seconds = op_times(logdir)
    parts: collections.Counter = collections.Counter()
    backward: collections.Counter = collections.Counter()
    for op, secs in seconds.items():
        part = part_of(op)
        if part:
            parts[part] += secs
        if part == "LSTM backward (through time)":
            backward[op_kind(op)] += secs
    total = sum(parts.values())
    per_image, batch_size, precision, _ = VARIANTS[args.row]
    print(f"data: {args.data or 'synthetic Flickr8k-sized grid'}; row {args.row!r} ({batch_size} captions per batch, "
          f"{per_image} per image, {precision}); {args.batches} traced steps")
    print(f"wall {wall * 1000:.0f} ms per step; op time {total * 1000 / args.batches:.0f} ms per step "
          f"(summed over TensorFlow's compute threads)")
    print(f"{'part':<34}{'ms/step':>9}{'share':>8}")
    for part, secs in parts.most_common():
        print(f"{part:<34}{secs * 1000 / args.batches:>9.1f}{100 * secs / total:>7.1f}%")
    lstm_back = sum(backward.values())
    print("LSTM backward by op kind: " + ", ".join(
        f"{kind} {100 * secs / lstm_back:.0f}%" for kind, secs in backward.most_common(6)))


if __name__ == "__main__":
    main()
