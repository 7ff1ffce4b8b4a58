"""Images and their features: photo decoding, the encoders and their weights, extraction into `data/features/` and the feature store."""
