"""DVC stage `evaluate`: caption the evaluation split, score BLEU-1..4 and CIDEr-D, write predictions and a figure."""

from captioner.evaluation import run_evaluate
from captioner.core.native_logs import start_tensorflow
from captioner.core.params import load_params
from captioner.core.stage import run_main, stage_args


def main() -> None:
    """Score the bundle on params.yaml's `evaluate.split` with `evaluate.beam_size`."""
    args = stage_args(__doc__, inputs=["model", "features", "processed", "raw"], outputs=["metrics"])
    start_tensorflow()  # before any work: its CUDA probe lines are dropped on a machine without a GPU
    scores = run_evaluate(load_params(args.params), args.model, args.features, args.processed, args.raw, args.metrics)
    print(
        f"{scores['split']} ({scores['n_images']} images, beam {scores['beam_size']}): "
        + ", ".join(f"{k} {scores[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider"))
    )


if __name__ == "__main__":
    run_main(main)
