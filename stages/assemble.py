"""DVC stage `assemble`: the bundle that `captioner predict` and `evaluate` read, from the members' bundles
(`finetune@SEED` for each seed in params.yaml's `members`): one member's bundle as it is, several as an ensemble."""

from captioner.core.native_logs import start_tensorflow
from captioner.core.params import load_params
from captioner.core.stage import run_main, stage_args
from captioner.model.ensemble import assemble_members


def main() -> None:
    """Assemble params.yaml's `members` (with captioner.tflite when `scst.litert`); print what was written."""
    args = stage_args(__doc__, inputs=["members"], outputs=["model"])
    params = load_params(args.params)
    if len(params["members"]) > 1:  # an ensemble loads every member (one member is copied without TensorFlow)
        start_tensorflow()  # its CUDA probe lines are dropped on a machine without a GPU
    assemble_members(params, args.members, args.model)
    seeds = params["members"]
    print(f"{args.model}: member {seeds[0]}'s bundle" if len(seeds) == 1 else
          f"{args.model}: an ensemble of {len(seeds)} members (seeds {', '.join(str(seed) for seed in seeds)})")


if __name__ == "__main__":
    run_main(main)
