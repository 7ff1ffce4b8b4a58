"""captioner: an image-caption generator built as a DVC pipeline on Keras 3 / TensorFlow."""

__version__ = "0.1.0"
