"""The Python API: `Captioner.load("models/captioner").caption(images, beam_size=3)`.

One code path for `captioner predict`, `captioner serve` and the evaluate stage: images (paths, PIL
images, arrays or encoded bytes) go through the bundle's encoder, the features through beam search, and
every image gets a `Caption`: the caption, its log-probability, the other beams with theirs and, for
the attention decoder, one attention map over the feature grid per word.

Two runtimes run the same trained weights: Keras on TensorFlow (training, evaluation, bundles without a
LiteRT file) and LiteRT (`captioner.tflite` in the bundle), which `load` prefers because it starts
without importing TensorFlow. Photos are decoded by `photos.py` for both, so the encoder sees the same pixels.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captioner.model.bundle import Bundle, load_bundle, read_checked
from captioner.core.errors import CaptionerError
from captioner.model.litert import LITERT_FILE, LiteRuntime, litert_available
from captioner.vision.encoders import output_shape

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | bytes
RUNTIMES = ("auto", "keras", "litert")


@dataclass
class Beam:
    """Another caption beam search found, with its summed log-probability and its ranking score."""

    caption: str
    log_prob: float
    score: float  # what beams are ranked by: log_prob / length**length_alpha


@dataclass
class Caption:
    """One image's result: the chosen caption and the alternatives, best first (by `score`)."""

    caption: str
    log_prob: float
    score: float  # log_prob / length**length_alpha, the length-normalised score beams are ranked by
    words: list[str]
    alternatives: list[Beam]
    attention: np.ndarray | None  # (len(words), h, w): where the decoder looked for each word; None without attention

    def to_json(self, attention: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (attention maps as nested lists, rounded to 4 decimals)."""
        out: dict[str, Any] = {
            "caption": self.caption,
            "log_prob": round(self.log_prob, 4),
            "score": round(self.score, 4),
            "words": self.words,
            "alternatives": [{"caption": b.caption, "log_prob": round(b.log_prob, 4), "score": round(b.score, 4)}
                             for b in self.alternatives],
        }
        if attention:
            out["attention"] = None if self.attention is None else np.round(self.attention, 4).tolist()
        return out


class Captioner:
    """A loaded model bundle that captions images; the encoder is built on first use of images.

    With a LiteRuntime (`lite`), encoder and decoder run on it and `bundle.model` may be None; otherwise
    on Keras. An ensemble bundle decodes with every member, their per-word probabilities averaged (on LiteRT
    its captioner.tflite runs them all), and its attention maps are the members' mean. A `flip` bundle reads each
    image as it is and mirrored (the encoder runs on both), the mirrored view's words and maps mapped back.
    """

    def __init__(self, bundle: Bundle, source: str = "", compiled: bool = True, lite: LiteRuntime | None = None):
        self.bundle = bundle
        self.source = source
        self.compiled = compiled
        self.lite = lite
        if lite is not None:
            from captioner.model.litert import LiteDecoder

            if lite.vocab_size != len(bundle.vocab):
                raise CaptionerError(f"{source}: {LITERT_FILE} predicts {lite.vocab_size} tokens but the vocabulary "
                                     f"has {len(bundle.vocab)} (files from different runs?)")
            self._decoder = LiteDecoder(lite, bundle.vocab.max_length, attention=bundle.decoder_kind == "attention")
        else:
            from captioner.model.decode import CaptionDecoder

            model = bundle.decoders if bundle.members else bundle.model
            self._decoder = CaptionDecoder(model, bundle.vocab.max_length, attention=True, compiled=compiled,
                                           mirror=bundle.mirror)
        self._encoder = None
        self._encode_fn = None

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str] = "models/captioner", compiled: bool = True,
             runtime: str = "auto") -> Captioner:
        """Load and check a bundle folder (decoder.keras, vocab.json, config.json, optionally captioner.tflite).

        `runtime`: "litert" runs the bundle's captioner.tflite without TensorFlow (a start well under a
        second), "keras" the Keras decoder on TensorFlow, "auto" LiteRT when the bundle has the file and
        `ai-edge-litert` is installed. `compiled=False` (Keras) skips graph tracing (about a second at
        start-up) at a higher cost per image: for a process that captions a handful of images and exits.
        """
        if runtime not in RUNTIMES:
            raise CaptionerError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        lite_file = Path(model_dir) / LITERT_FILE
        if runtime == "auto":
            runtime = "litert" if lite_file.is_file() and litert_available() else "keras"
        if runtime == "keras":
            return cls(load_bundle(model_dir), source=str(model_dir), compiled=compiled)
        config, vocab = read_checked(model_dir)
        if not lite_file.is_file():
            raise CaptionerError(f"{model_dir}: bundle lacks {LITERT_FILE} (train with scst.litert: true, "
                                 "or use the keras runtime)")
        if not litert_available():
            raise CaptionerError("the litert runtime needs the ai-edge-litert package (pip install ai-edge-litert)")
        return cls(Bundle(model=None, vocab=vocab, config=config), str(model_dir), compiled, LiteRuntime(lite_file))

    @property
    def config(self) -> dict[str, Any]:
        """The bundle's config.json."""
        return self.bundle.config

    @property
    def default_beam_size(self) -> int:
        """The bundle's beam size (`decoding.beam_size`)."""
        return int(self.config["decoding"]["beam_size"])

    @property
    def input_size(self) -> int:
        """Side of the square image the encoder takes."""
        return int(self.config["encoder"]["input_size"])

    @cached_property
    def grid_shape(self) -> tuple[int, int] | None:
        """(h, w) of the attention maps, or None for decoders without attention."""
        shape = self.bundle.feature_shape
        if self.config["decoder"].get("tail"):  # the tail ends where the encoder does: its grid
            shape = output_shape(self.config["encoder"]["name"], "grid")
        return (shape[0], shape[1]) if self._decoder.attention else None

    def describe(self) -> dict[str, Any]:
        """What this captioner serves: bundle folder, encoder, decoder (and how many are averaged), vocabulary size,
        beam size."""
        enc = self.config["encoder"]
        return {
            "model": self.source,
            "encoder": f"{enc['name']} {enc['output']}",
            "decoder": self.bundle.decoder_kind,
            "members": self.bundle.member_count,
            "flip": self.bundle.flip,
            "vocab_size": len(self.bundle.vocab),
            "beam_size": self.default_beam_size,
            "runtime": "litert" if self.lite is not None else "keras",
            "attention": self.grid_shape is not None,
        }

    def caption(self, images: Sequence[ImageInput] | ImageInput, beam_size: int | None = None) -> list[Caption]:
        """Caption images: paths, PIL images, (h, w[, 3]) arrays 0-255 or encoded bytes; one Caption per image.

        One image needs no list; an (n, h, w, 3) array is n images. An image that cannot be read is a
        CaptionerError naming it.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, (str, os.PathLike, bytes, np.ndarray)) or not isinstance(images, Sequence):
            images = [images]
        return self.caption_features(self.encode(list(images)), beam_size)

    def caption_files(
        self, paths: Sequence[Path], beam_size: int | None = None, batch_size: int = 32
    ) -> tuple[dict[int, Caption], dict[int, str]]:
        """Caption image files in batches: ({index into paths: Caption}, {index: why it could not be read})."""
        beam = self._beam(beam_size)
        if batch_size < 1:
            raise CaptionerError(f"batch size must be at least 1, got {batch_size}")
        if self.lite is not None or not self.compiled:  # no tf.data pipeline (LiteRT; or a few images)
            return self._caption_each(paths, beam, batch_size)
        from captioner.vision.images import describe_failure, image_batches

        done: list[int] = []
        features = []
        for indices, images in image_batches(list(paths), self.input_size, batch_size):
            features.append(self._encode(images))
            done.extend(indices.numpy().tolist())
        results = self.caption_features(np.concatenate(features), beam) if done else []
        ok = set(done)
        failed = {i: describe_failure(Path(p)) for i, p in enumerate(paths) if i not in ok}
        return dict(zip(done, results)), failed

    def _caption_each(
        self, paths: Sequence[Path], beam: int, batch_size: int
    ) -> tuple[dict[int, Caption], dict[int, str]]:
        """`caption_files` without tf.data: photos decoded one by one (Pillow), encoded in batches, then captioned."""
        from captioner.vision.photos import photo_input

        done, features, batch, failed = [], [], [], {}
        for i, path in enumerate(paths):
            try:
                batch.append(photo_input(self._read(Path(path)), self.input_size))
                done.append(i)
            except CaptionerError as exc:
                failed[i] = str(exc)
            if len(batch) == batch_size:
                features.append(self._encode(np.stack(batch)))
                batch = []
        if batch:
            features.append(self._encode(np.stack(batch)))
        results = self.caption_features(np.concatenate(features), beam) if done else []
        return dict(zip(done, results)), failed

    def caption_features(self, features: np.ndarray, beam_size: int | None = None, progress: bool = False,
                         length_alpha: float | None = None) -> list[Caption]:
        """Caption rows of extracted encoder features (grids are pooled for decoders that take vectors); for a `flip`
        bundle each row holds both views, (N, 2, *feature_shape), view 1 the mirrored image's features.

        `length_alpha` (default: the bundle's `decoding.length_alpha`) ranks finished beams by log p / length**alpha.
        """
        from tqdm import tqdm

        from captioner.vision.feature_store import prepare_features

        beam = self._beam(beam_size)
        if tuple(features.shape[1:]) != self.bundle.input_shape:
            views = " (each image as it is and mirrored: decoding.flip)" if self.bundle.flip else ""
            raise CaptionerError(
                f"features of shape {tuple(features.shape[1:])} but the decoder reads {self.bundle.input_shape}{views}"
            )
        rows = features.shape[: features.ndim - len(self.bundle.feature_shape)]  # (N,) or, with flip, (N, 2)
        feats = prepare_features(features.reshape(-1, *self.bundle.feature_shape), self.bundle.decoder_kind, "features")
        feats = feats.reshape(*rows, *feats.shape[1:])
        alpha = float(self.config["decoding"].get("length_alpha", 1.0) if length_alpha is None else length_alpha)
        with tqdm(total=len(feats), desc="captioning", unit="img", disable=not progress, file=sys.stderr) as bar:
            found = self._decoder.beam_search(feats, beam, alpha, progress=bar.update)
        return [self._result(beams) for beams in found]

    def caption_inputs(self, inputs: np.ndarray, beam_size: int | None = None) -> list[Caption]:
        """Caption encoder inputs already decoded and squashed: (n, size, size, 3) float32 0-255.

        For callers that decode photos their own way (the server bounds the memory of large uploads).
        """
        expected = (self.input_size, self.input_size, 3)
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != expected:
            raise CaptionerError(f"encoder inputs must be (n, {', '.join(map(str, expected))}), got {inputs.shape}")
        return self.caption_features(self._encode(inputs.astype(np.float32, copy=False)), beam_size)

    def encode(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Encoder features (n, *feature_shape) of in-memory or on-disk images, as extraction stores them (a `flip`
        bundle's: (n, 2, *feature_shape), the images as they are and mirrored)."""
        from captioner.vision.photos import photo_input, resize_photo, to_rgb_array

        batch = []
        for i, image in enumerate(images):
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"
            try:
                if isinstance(image, (str, os.PathLike)):
                    image = self._read(Path(image))
                if isinstance(image, bytes):
                    batch.append(photo_input(image, self.input_size))
                else:
                    batch.append(resize_photo(to_rgb_array(image), self.input_size))
            except CaptionerError as exc:
                raise CaptionerError(f"{name}: {exc}") from exc
        if not batch:
            return np.zeros((0, *self.bundle.input_shape), dtype=self._feature_dtype)
        return self._encode(np.stack(batch))

    @property
    def encoder(self):
        """The image encoder (Keras model) the bundle names, built once."""
        if self._encoder is None:
            from captioner.vision.encoders import build_encoder

            enc = self.config["encoder"]
            self._encoder = build_encoder(enc["name"], enc["weights"], enc["output"])
            shape = tuple(int(d) for d in self._encoder.output.shape[1:])
            if shape != self.bundle.feature_shape:
                raise CaptionerError(
                    f"{self.source}: encoder {enc['name']} gives features {shape} "
                    f"but the decoder was trained on {self.bundle.feature_shape}"
                )
        return self._encoder

    def _encode(self, images) -> np.ndarray:
        """The features the decoder reads for a float32 batch of encoder inputs: the encoder's, with `flip` stacked
        with those of the mirrored images (flipped just before the encoder, as extraction does). Two encoder calls,
        not one of both batches: the encoder's numbers depend on the batch size, and view 0 must equal the plain
        encoder's features (one batched call differed in 48 of 62,720 float16 values)."""
        if not self.bundle.flip:
            return self._run_encoder(images)
        images = np.asarray(images)
        return np.stack([self._run_encoder(images), self._run_encoder(images[:, :, ::-1])], axis=1)

    def _run_encoder(self, images) -> np.ndarray:
        """Run the encoder on a float32 batch (one traced graph for any batch size if compiled); stored dtype."""
        if self.lite is not None:
            return self.lite.encode(np.asarray(images)).astype(self._feature_dtype)
        if self._encode_fn is None:
            import tensorflow as tf

            encoder = self.encoder
            self._encode_fn = lambda x: encoder(x, training=False)
            if self.compiled:
                spec = tf.TensorSpec((None, self.input_size, self.input_size, 3), tf.float32)
                self._encode_fn = tf.function(self._encode_fn, input_signature=[spec])
        return np.asarray(self._encode_fn(images)).astype(self._feature_dtype)

    @property
    def _feature_dtype(self) -> np.dtype:
        """Features pass through the dtype extraction stores (float16 grids), so predict matches evaluate."""
        from captioner.vision.feature_store import feature_dtype

        return feature_dtype(self.config["encoder"]["output"])

    def _beam(self, beam_size: int | None) -> int:
        """The beam width to use: the argument or the bundle's; below 1 is an error."""
        beam = self.default_beam_size if beam_size is None else int(beam_size)
        if beam < 1:
            raise CaptionerError(f"beam size must be at least 1, got {beam}")
        return beam

    @staticmethod
    def _read(path: Path) -> bytes:
        """The bytes of an image file; an unreadable file is a CaptionerError."""
        try:
            return path.read_bytes()
        except OSError as exc:
            raise CaptionerError(exc.strerror or str(exc)) from exc

    def _result(self, beams) -> Caption:
        """A Caption from one image's Beams (ids best first)."""
        vocab = self.bundle.vocab
        words = [vocab.tokens[i] for i in beams.ids[0]]
        attention = None
        if beams.attention is not None and self.grid_shape is not None:
            attention = beams.attention[0].reshape(len(words), *self.grid_shape).astype(np.float32)
        alternatives = [Beam(vocab.decode(ids), lp, score)
                        for ids, lp, score in zip(beams.ids[1:], beams.log_probs[1:], beams.scores[1:])]
        return Caption(" ".join(words), beams.log_probs[0], beams.scores[0], words, alternatives, attention)
