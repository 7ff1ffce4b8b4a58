"""DVC stage `extract_features`: data/raw/Images -> data/features/ (features.h5 + meta.json), resumable."""

from captioner.core.errors import CaptionerError
from captioner.core.native_logs import start_tensorflow
from captioner.core.params import load_params, where
from captioner.core.stage import run_main, stage_args
from captioner.vision.encoders import get_spec


def main() -> None:
    """Encode every image with the encoder that params.yaml's `features` section names."""
    args = stage_args(__doc__, inputs=["images"], outputs=["out"])
    features = load_params(args.params)["features"]
    try:  # an unknown encoder (or fused member) is one line naming the params file, before TensorFlow loads
        get_spec(features["encoder"])
    except CaptionerError as exc:
        raise CaptionerError(f"{where('features.encoder')}: {exc}") from exc
    start_tensorflow()  # before any work: its CUDA probe lines are dropped on a machine without a GPU
    import tensorflow as tf

    from captioner.vision.features import run_extraction

    gpus = tf.config.list_physical_devices("GPU")
    meta = run_extraction(args.images, args.out, features)
    print(
        f"{args.out}: {meta['num_images']} images, {meta['encoder']} {meta['output']} "
        f"{tuple(meta['feature_shape'])} {meta['dtype']}, {meta['num_skipped']} skipped, "
        f"on {f'GPU:0 ({len(gpus)} visible)' if gpus else 'CPU'}"
    )


if __name__ == "__main__":
    run_main(main)
