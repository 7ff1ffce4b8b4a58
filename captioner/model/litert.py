"""The bundle's LiteRT file: encoder and decoder as one `.tflite`, run without TensorFlow for a fast start.

Importing TensorFlow takes 2-3 s on a laptop-class CPU, more than captioning a photo. The train stage
therefore also writes `captioner.tflite` into the bundle: three signatures, `encode` (images ->
features, the bundle's encoder), `init` and `step` (the decoding graphs of `model.step_models`),
converted from the trained Keras models with TensorFlow's own converter (Keras `ExportArchive`, then
`TFLiteConverter`, builtin ops only). `LiteRuntime` runs them with the `ai-edge-litert` interpreter
(XNNPACK on the CPU), which imports in a fraction of a second; `LiteDecoder` puts beam search on it.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from captioner.model.decode import BeamDecoder
from captioner.core.errors import CaptionerError

LITERT_FILE = "captioner.tflite"
SIGNATURES = ("encode", "init", "step")


def litert_bytes(encoder, model, mirror: np.ndarray | None = None) -> bytes:
    """The `.tflite` flatbuffer of an encoder (Keras model: images -> features) and a training model's decoding graphs
    (of a sequence of training models: the ensemble's, one `init`/`step` pair that runs every member; with `mirror`,
    graphs whose `init` takes both views of each image, `decoders.ensemble_step_models`).

    The same models give the same bytes in a fresh process (the bundle is hashed by DVC); the step graph's LSTM
    is unrolled for its one time step, which the converter's builtin ops need.
    """
    import keras
    import tensorflow as tf

    from captioner.model.decoders import decoding_models

    lstms = [m.get_layer("lstm") for m in ([model] if isinstance(model, keras.Model) else model)]
    for lstm in lstms:
        lstm.unroll = True
    try:
        models = decoding_models(model, mirror)
        archive = keras.export.ExportArchive()
        for name, graph in zip(SIGNATURES, (encoder, models.init, models.step)):
            archive.track(graph)
            specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=_input_name(t)) for t in graph.inputs]
            archive.add_endpoint(
                name, functools.partial(graph.__call__, training=False), input_signature=[specs if len(specs) > 1 else specs[0]]
            )
        with tempfile.TemporaryDirectory() as saved:
            archive.write_out(saved, verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(SIGNATURES))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            return converter.convert()
    finally:
        for lstm in lstms:
            lstm.unroll = False


def _input_name(tensor) -> str:
    """A Keras input's name as the LiteRT signature exposes it (the layer name, without Keras' suffixes)."""
    return tensor.name.split(":")[0]


def litert_available() -> bool:
    """Whether the `ai-edge-litert` interpreter can be imported."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


class LiteRuntime:
    """The three signatures of a bundle's `captioner.tflite`, called with and returning NumPy arrays."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        from captioner.core.native_logs import quiet_native_stderr

        path = Path(path)
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
            with quiet_native_stderr():  # the XNNPACK delegate announces itself on first allocation
                self._interpreter.allocate_tensors()
            runners = {name: self._interpreter.get_signature_runner(name) for name in SIGNATURES}
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CaptionerError(f"{path}: not a captioner LiteRT file ({first})") from exc
        self._runners = runners
        self._inputs = {name: _input_order(runner) for name, runner in runners.items()}

    @property
    def vocab_size(self) -> int:
        """Width of the step's log-probabilities: the vocabulary the decoder was trained with."""
        return int(self._runners["step"].get_output_details()["output_0"]["shape_signature"][-1])

    def _call(self, name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
        runner = self._runners[name]
        outputs = runner(**dict(zip(self._inputs[name], arrays)))
        return [outputs[f"output_{i}"] for i in range(len(outputs))]

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Encoder features of a float32 (n, size, size, 3) batch, 0-255."""
        return self._call("encode", [np.ascontiguousarray(images, dtype=np.float32)])[0]

    def init(self, features: np.ndarray) -> list[np.ndarray]:
        """[h, c, *context] of each image's decoder state."""
        return self._call("init", [np.ascontiguousarray(features, dtype=np.float32)])

    def step(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """[log p, h, c(, attention)] for [token (N, 1), h, c, *context]."""
        return self._call("step", [np.ascontiguousarray(a) for a in inputs])


def _input_order(runner) -> list[str]:
    """A signature's input names in the Keras model's input order (image | token, h, c, context_0, ...)."""
    names = list(runner.get_input_details())
    order = {"image": 0, "token": 0, "h": 1, "c": 2}
    return sorted(names, key=lambda n: (order.get(n, 3), int(n.rsplit("_", 1)[1]) if n.startswith("context_") else 0))


class LiteDecoder(BeamDecoder):
    """Beam search on a LiteRuntime's `init` and `step` (attention maps always come with the step)."""

    def __init__(self, runtime: LiteRuntime, max_length: int, attention: bool, chunk_images: int = 256):
        super().__init__(max_length, attention, chunk_images)
        self.runtime = runtime

    def _init_arrays(self, images: np.ndarray) -> list[np.ndarray]:
        return self.runtime.init(images)

    def _step_arrays(self, inputs: list[Any]) -> list[np.ndarray]:
        return self.runtime.step(inputs)
