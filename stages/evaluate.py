"""DVC stage `evaluate`: caption the evaluation split, score BLEU-1..4 and CIDEr-D, write predictions and a figure."""

from captioner.evaluation import run_evaluate
from captioner.params import load_params
from captioner.stage import run_main


def main() -> None:
    scores = run_evaluate(load_params("params.yaml"))
    print(
        f"{scores['split']} ({scores['n_images']} images, beam {scores['beam_size']}): "
        + ", ".join(f"{k} {scores[k]:.4f}" for k in ("bleu1", "bleu2", "bleu3", "bleu4", "cider"))
    )


if __name__ == "__main__":
    run_main(main)
