"""Stop training at the first NaN or infinite loss or reward: a diverged model must never be saved as trained.

Without this, Keras trains on through `loss: nan`, early stopping restores "best" weights that are NaN too,
and the stage exits 0 with a bundle that captions every image with nothing. Both training stages hook in
here: cross-entropy through the Keras callback `stop_on_nonfinite`, self-critical through `require_finite`.
"""

from __future__ import annotations

import math
from typing import Any

from captioner.core.errors import CaptionerError

_ADVICE = "no model written; a lower learning rate may help"


def require_finite(value: Any, what: str) -> float:
    """`value` (a number or scalar tensor) as a float; NaN or infinity is a one-line CaptionerError naming `what`."""
    number = float(value)
    if not math.isfinite(number):
        raise CaptionerError(f"training stopped: {what} is {number} ({_ADVICE})")
    return number


def rounded(value: float, digits: int) -> float | None:
    """`value` rounded for a metrics file, or None for NaN (a score not measured, e.g. without a val split).

    Metrics files are strict JSON (`atomic.write_json` refuses NaN), and null says "not measured" there.
    """
    return None if math.isnan(value) else round(value, digits)


def stop_on_nonfinite():
    """A Keras callback that raises a one-line CaptionerError at the first batch or epoch with a non-finite loss.

    Batches are checked on the train loss Keras reports (the epoch's running mean, which stays NaN once a batch
    was NaN), epochs also on the val loss. Raising, not `stop_training`, keeps early stopping from restoring
    weights and the stage from saving them.
    """
    import keras

    class StopOnNonFinite(keras.callbacks.Callback):
        async_safe = True  # the check reads only its own arguments; Keras may run it off the training thread

        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if logs and "loss" in logs:
                require_finite(logs["loss"], f"the train loss at epoch {self.epoch + 1}, batch {batch + 1}")

        def on_epoch_end(self, epoch, logs=None):
            for key in ("loss", "val_loss"):
                if logs and key in logs:
                    require_finite(logs[key], f"the {key.replace('_', ' ')} of epoch {epoch + 1}")

    return StopOnNonFinite()
