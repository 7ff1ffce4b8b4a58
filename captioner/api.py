"""The Python API: `Captioner.load("models/captioner").caption(images, beam_size=3)`.

One code path for `captioner predict`, `captioner serve` and the evaluate stage: images (paths, PIL
images, arrays or encoded bytes) go through the bundle's encoder, the features through beam search, and
every image gets a `Caption`: the caption, its log-probability, the other beams with theirs and, for
the attention decoder, one attention map over the feature grid per word.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captioner.bundle import Bundle, load_bundle
from captioner.errors import CaptionerError

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | bytes


@dataclass
class Beam:
    """Another caption beam search found, with its summed log-probability."""

    caption: str
    log_prob: float


@dataclass
class Caption:
    """One image's result: the chosen caption and the alternatives, best first."""

    caption: str
    log_prob: float
    words: list[str]
    alternatives: list[Beam]
    attention: np.ndarray | None  # (len(words), h, w): where the decoder looked for each word; None without attention

    def to_json(self, attention: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (attention maps as nested lists, rounded to 4 decimals)."""
        out: dict[str, Any] = {
            "caption": self.caption,
            "log_prob": round(self.log_prob, 4),
            "words": self.words,
            "alternatives": [{"caption": b.caption, "log_prob": round(b.log_prob, 4)} for b in self.alternatives],
        }
        if attention:
            out["attention"] = None if self.attention is None else np.round(self.attention, 4).tolist()
        return out


class Captioner:
    """A loaded model bundle that captions images; the encoder is built on first use of images."""

    def __init__(self, bundle: Bundle, source: str = "", compiled: bool = True):
        from captioner.decode import CaptionDecoder

        self.bundle = bundle
        self.source = source
        self.compiled = compiled
        self._decoder = CaptionDecoder(bundle.model, bundle.vocab.max_length, attention=True, compiled=compiled)
        self._encoder = None
        self._encode_fn = None

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str] = "models/captioner", compiled: bool = True) -> Captioner:
        """Load and check a bundle folder (decoder.keras, vocab.json, config.json).

        `compiled=False` skips graph tracing (about a second at start-up) at a higher cost per image:
        for a process that captions a handful of images and exits.
        """
        return cls(load_bundle(model_dir), source=str(model_dir), compiled=compiled)

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

    @property
    def grid_shape(self) -> tuple[int, int] | None:
        """(h, w) of the attention maps, or None for decoders without attention."""
        shape = self.bundle.feature_shape
        return (shape[0], shape[1]) if self._decoder.attention else None

    def describe(self) -> dict[str, Any]:
        """What this captioner serves: bundle folder, encoder, decoder, vocabulary size, beam size."""
        enc = self.config["encoder"]
        return {
            "model": self.source,
            "encoder": f"{enc['name']} {enc['output']}",
            "decoder": self.bundle.decoder_kind,
            "vocab_size": len(self.bundle.vocab),
            "beam_size": self.default_beam_size,
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
        from captioner.images import describe_failure, image_batches

        beam = self._beam(beam_size)
        if batch_size < 1:
            raise CaptionerError(f"batch size must be at least 1, got {batch_size}")
        if not self.compiled:  # a few images: decoding each one directly beats setting up a tf.data pipeline
            return self._caption_each(paths, beam)
        done: list[int] = []
        features = []
        for indices, images in image_batches(list(paths), self.input_size, batch_size):
            features.append(self._encode(images))
            done.extend(indices.numpy().tolist())
        results = self.caption_features(np.concatenate(features), beam) if done else []
        ok = set(done)
        failed = {i: describe_failure(Path(p)) for i, p in enumerate(paths) if i not in ok}
        return dict(zip(done, results)), failed

    def _caption_each(self, paths: Sequence[Path], beam: int) -> tuple[dict[int, Caption], dict[int, str]]:
        """`caption_files` for a few images: decoded one by one, encoded and captioned in one batch."""
        import tensorflow as tf

        from captioner.images import decode_bytes

        done, images, failed = [], [], {}
        for i, path in enumerate(paths):
            try:
                images.append(decode_bytes(self._read(Path(path)), self.input_size))
                done.append(i)
            except CaptionerError as exc:
                failed[i] = str(exc)
        results = self.caption_features(self._encode(tf.stack(images)), beam) if images else []
        return dict(zip(done, results)), failed

    def caption_features(self, features: np.ndarray, beam_size: int | None = None, progress: bool = False) -> list[Caption]:
        """Caption rows of extracted encoder features (grids are pooled for decoders that take vectors)."""
        from tqdm import tqdm

        from captioner.model import prepare_features

        beam = self._beam(beam_size)
        if tuple(features.shape[1:]) != self.bundle.feature_shape:
            raise CaptionerError(
                f"features of shape {tuple(features.shape[1:])} but the decoder was trained on {self.bundle.feature_shape}"
            )
        feats = prepare_features(features, self.bundle.decoder_kind, "features")
        alpha = float(self.config["decoding"].get("length_alpha", 1.0))
        with tqdm(total=len(feats), desc="captioning", unit="img", disable=not progress, file=sys.stderr) as bar:
            found = self._decoder.beam_search(feats, beam, alpha, progress=bar.update)
        return [self._result(beams) for beams in found]

    def encode(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Encoder features (n, *feature_shape) of in-memory or on-disk images, as extraction stores them."""
        import tensorflow as tf

        from captioner.images import decode_bytes, resize, to_rgb_array

        batch = []
        for i, image in enumerate(images):
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"
            try:
                if isinstance(image, (str, os.PathLike)):
                    image = self._read(Path(image))
                if isinstance(image, bytes):
                    batch.append(decode_bytes(image, self.input_size))
                else:
                    batch.append(resize(tf.convert_to_tensor(to_rgb_array(image)), self.input_size))
            except CaptionerError as exc:
                raise CaptionerError(f"{name}: {exc}") from exc
        if not batch:
            return np.zeros((0, *self.bundle.feature_shape), dtype=self._feature_dtype)
        return self._encode(tf.stack(batch))

    @property
    def encoder(self):
        """The image encoder (Keras model) the bundle names, built once."""
        if self._encoder is None:
            from captioner.encoders import build_encoder

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
        """Run the encoder on a float32 batch (one traced graph for any batch size if compiled); stored dtype."""
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
        from captioner.features import feature_dtype

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
        alternatives = [Beam(vocab.decode(ids), lp) for ids, lp in zip(beams.ids[1:], beams.log_probs[1:])]
        return Caption(" ".join(words), beams.log_probs[0], words, alternatives, attention)
