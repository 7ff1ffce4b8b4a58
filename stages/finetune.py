"""DVC stage `finetune@SEED` (one per seed in params.yaml's `members`): self-critical training of `train@SEED`'s
model on CIDEr-D with that seed; write the member's bundle (the `assemble` stage's input), and metrics."""

from captioner.core.native_logs import start_tensorflow
from captioner.core.params import load_params, member_params
from captioner.core.stage import run_main, stage_args
from captioner.model.finetune import run_finetune


def main() -> None:
    """Fine-tune with params.yaml's `scst` section and the member's `--seed`; print a summary."""
    args = stage_args(__doc__, inputs=["features", "processed", "xe"], outputs=["model", "metrics", "live"], seed=True)
    start_tensorflow()  # before any work: its CUDA probe lines are dropped on a machine without a GPU
    params = member_params(load_params(args.params), args.seed)
    summary = run_finetune(params, args.features, args.processed, args.xe, args.model, args.metrics, str(args.live))
    if summary["epochs_run"]:
        print(
            f"self-critical: {summary['epochs_run']} epochs in {summary['seconds']:.0f} s, greedy val CIDEr-D "
            f"{summary['start_val_cider']} -> {summary['best_val_cider']}, BLEU-4 {summary['start_val_bleu4']} -> "
            f"{summary['best_val_bleu4']} (kept epoch {summary['best_epoch']})"
        )
    else:
        print("self-critical training off (scst.epochs 0): the cross-entropy model is the bundle")
    print(f"finetune stage: {summary['total_seconds']:.0f} s in all")


if __name__ == "__main__":
    run_main(main)
