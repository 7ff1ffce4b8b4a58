"""The trained model: decoders, decoding, cross-entropy and self-critical training, scores, and the bundle that carries it all to serving."""
