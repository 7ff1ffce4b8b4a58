"""captioner: an image-caption generator built as a DVC pipeline on Keras 3 / TensorFlow.

`from captioner import Captioner` loads the Python API on first use, so `import captioner` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captioner.serving.api import Captioner

__version__ = "0.1.0"
__all__ = ["Captioner", "__version__"]


def __getattr__(name: str) -> Any:
    """Import `Captioner` (and with it TensorFlow) only when it is asked for."""
    if name == "Captioner":
        from captioner.serving.api import Captioner

        return Captioner
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
