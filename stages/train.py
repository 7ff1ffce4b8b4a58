"""DVC stage `train@SEED` (one per seed in params.yaml's `members`): cross-entropy training of the decoder on
the features and token sequences with that seed; write the model (read by `finetune@SEED`) and metrics."""

import sys

from captioner.core.native_logs import start_tensorflow
from captioner.core.params import load_params, member_params, warn_useless
from captioner.core.stage import run_main, stage_args
from captioner.model.distribute import read_cluster
from captioner.model.training import run_train


def main() -> None:
    """Train with params.yaml's `train` section and the member's `--seed`; print a summary.

    Under a TF_CONFIG cluster every worker runs this same command; only the chief writes the outputs.
    """
    cluster = read_cluster()
    chief = cluster is None or cluster.is_chief
    args = stage_args(__doc__, inputs=["features", "processed"], outputs=["model", "metrics", "live"], clean=chief,
                      seed=True)
    start_tensorflow()  # before any work: its CUDA probe lines are dropped on a machine without a GPU
    params = member_params(load_params(args.params), args.seed)
    warn_useless(params, "train")
    verbose = "auto" if sys.stdout.isatty() else 2  # one line per epoch in logs (dvc repro pipes stdout)
    summary = run_train(params, args.features, args.processed, args.model, args.metrics, str(args.live),
                        verbose=verbose)
    if not chief:
        print(f"worker {cluster.rank} of {cluster.workers}: trained its share for {summary['epochs_run']} epochs "
              f"in {summary['wall_seconds']:.0f} s; the chief writes the model and metrics")
        return
    print(
        f"trained {summary['decoder']} for {summary['epochs_run']} epochs (best {summary['best_epoch']}, "
        f"stopped by {summary['stopped_by']}) in {summary['wall_seconds']:.0f} s, "
        f"{summary['captions_per_second']} captions/s; train stage {summary['total_seconds']:.0f} s in all"
    )


if __name__ == "__main__":
    run_main(main)
