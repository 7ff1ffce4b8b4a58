"""The fine-tuned encoder tail: stage6 (or stage5) maps run through EfficientNet-Lite's last stages inside the decoder.

`start_tail` copies the ImageNet weights (those the feature file was extracted with) into the decoder's tail;
`TailAdam` trains the tail's variables at their own learning rate, a factor of the decoder's that
`TailSchedule` sets each epoch (0 before `train.tail_from_epoch`). Adam divides by the gradient's own scale, so
scaling the tail's gradients would change nothing: the factor scales the tail's learning rate in the update itself.
The tail's BatchNorms are folded into its convolutions (as in the extraction encoder), so their statistics never move.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import keras
from keras import ops

from captioner.core.errors import CaptionerError
from captioner.vision.efficientnet_lite import TAIL_MODEL, copy_tail_weights
from captioner.vision.encoders import weights_id


def start_tail(model: keras.Model, meta: dict[str, Any], source: str) -> None:
    """Load the classifier weights the features of `source` (meta.json `meta`) were extracted with into the tail."""
    name, weights = meta.get("encoder"), meta.get("weights")
    now = weights_id(name, weights)
    if meta.get("weights_id") not in (None, now):
        raise CaptionerError(f"{source}: extracted with {name} weights {meta.get('weights_id')} but {weights} is now "
                             f"{now}; re-run `dvc repro -f extract_features`")
    copy_tail_weights(model.get_layer(TAIL_MODEL), name, weights)


def _tail(model: keras.Model) -> keras.layers.Layer | None:
    """The decoder's tail submodel, or None for a decoder without one."""
    return next((layer for layer in model.layers if layer.name == TAIL_MODEL), None)


def tail_paths(model: keras.Model) -> list[str]:
    """Paths of the tail's trainable variables (none without a tail)."""
    tail = _tail(model)
    return [v.path for v in tail.trainable_variables] if tail is not None else []


@contextmanager
def tail_frozen(model: keras.Model) -> Iterator[None]:
    """Within the block the decoder's tail (if any) is not trainable: self-critical training leaves it as is."""
    tail = _tail(model)
    if tail is None:
        yield
        return
    tail.trainable = False
    try:
        yield
    finally:
        tail.trainable = True


@keras.saving.register_keras_serializable(package="captioner")
class TailAdam(keras.optimizers.Adam):
    """Adam whose update of the variables named in `tail_paths` uses learning_rate times `tail_factor` (a variable)."""

    def __init__(self, tail_paths: list[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.tail_paths = list(tail_paths or [])

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        wanted = set(self.tail_paths)
        self._tail_keys = {self._var_key(v) for v in variables if v.path in wanted}
        self.tail_factor = self.add_variable((), initializer="zeros", name="tail_factor")

    def update_step(self, gradient, variable, learning_rate):
        if self._var_key(variable) in self._tail_keys:
            learning_rate = ops.cast(learning_rate, variable.dtype) * ops.cast(self.tail_factor, variable.dtype)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "tail_paths": self.tail_paths}


class TailSchedule(keras.callbacks.Callback):
    """Sets the optimizer's tail factor at each epoch's start: 0 before `from_epoch` (1-based), then `factor`."""

    def __init__(self, from_epoch: int, factor: float):
        super().__init__()
        self.from_epoch, self.factor = int(from_epoch), float(factor)

    def on_train_begin(self, logs=None):
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.tail_factor.assign(self.factor if epoch + 1 >= self.from_epoch else 0.0)
