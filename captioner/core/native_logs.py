"""Keep native libraries' start-up lines (TensorFlow, LiteRT) off the terminal: they ignore Python's logging.

`quiet_native_stderr` silences everything for a moment; `without_gpu_probe_lines` drops only TensorFlow's CUDA
probe lines on a machine without a GPU and passes every other line on."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 for a moment: C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL and Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# TensorFlow's CUDA probe on a machine without an NVIDIA GPU: an I line at import and an E line ("E0000 ...
# failed call to cuInit") at device set-up that reads like an error. Where a GPU device node exists they are kept:
# there a failed cuInit is a real problem (a driver mismatch) worth seeing.
GPU_PROBE_LINES = (b"failed call to cuInit", b"Could not find cuda drivers on your machine")
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")


def has_gpu_device() -> bool:
    """Whether the machine has an NVIDIA GPU device node (Linux driver, or WSL's GPU bridge)."""
    return any(os.path.exists(node) for node in GPU_DEVICE_NODES)


@contextlib.contextmanager
def without_gpu_probe_lines() -> Iterator[None]:
    """Hold back what file descriptor 2 gets in the block, then pass it on without TensorFlow's GPU probe lines
    when there is no GPU; every other line (a real error included) comes through, in order."""
    if has_gpu_device():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            os.write(2, b"".join(line for line in lines if not any(probe in line for probe in GPU_PROBE_LINES)))


def start_tensorflow() -> None:
    """Import TensorFlow and set up its devices (where it probes for CUDA) without the probe's lines on a machine
    that has no GPU, so a stage's first lines are its own."""
    with without_gpu_probe_lines():
        import tensorflow as tf

        tf.config.list_physical_devices()
