"""GPU check: does the project run, and how fast, on this machine's GPU? One command, a report and a JSON file.

Steps, each timed:
1. environment: TensorFlow, Keras, CUDA/cuDNN it was built with, the GPUs and their compute capability,
   the precision `auto` resolves to (captioner/core/precision.py);
2. `dvc repro` of the embedded sample in a temporary copy of the project (a fresh git repo, as the tests'
   `copy_project` makes it), training capped at a few minutes;
3. one `captioner predict` with the bundle that repro trained, on LiteRT (its `captioner.tflite` export);
4. training speed of the default (attention) decoder on Flickr8k-size synthetic data in float32 and
   bfloat16, measured as benchmarks/train.py measures it (captions/s over timed steps after warm-up);
5. feature extraction speed (images/s of the stage's pipeline, efficientnet_lite0) on synthetic JPEGs;
6. data-parallel training over every GPU (MirroredStrategy) against one, when there are several.

Without a GPU it says so and runs the same steps on the CPU in a reduced mode (tiny sample and settings,
few images and steps; step 6 on two logical CPU devices), which is what CI runs so the check keeps working.

    python benchmarks/gpu_check.py [--reduced] [--json gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
PROJECT_FILES = ("captioner", "stages", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc", ".dvcignore", ".gitignore")

# Settings of the sample repro: the full check keeps the defaults but caps training; reduced mode is tiny.
FULL_PARAMS = {"train": {"max_minutes": 3.0}, "scst": {"max_minutes": 2.0}}
REDUCED_PARAMS = {
    "data": {"sample_images": 24},
    "features": {"batch_size": 8},
    "train": {"embedding_dim": 16, "units": 32, "output_units": 32, "attention_heads": 2, "epochs": 2,
              "batch_size": 20, "patience": 5, "max_minutes": 2.0},
    "scst": {"epochs": 1, "batch_images": 8},
    "evaluate": {"beam_size": 2, "figure_images": 2},
}
# Sizes of the speed steps: (synthetic images, warm-up steps, timed steps, extraction images, extraction batch)
FULL_SIZES = (6000, 8, 30, 256, 64)
REDUCED_SIZES = (200, 1, 2, 8, 8)

# Step 6 in a process of its own (TensorFlow fixes its devices at start-up): one epoch on 1 and on N devices.
DEVICES_RUN = """
import json, sys
import tensorflow as tf
n, reduced = int(sys.argv[1]), sys.argv[2] == "1"
if reduced:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
import train as bench
from captioner.core.params import DEFAULTS
from captioner.model.training import fit_decoder
bench.N_IMAGES = int(sys.argv[3])
data = bench.synthetic()
rates = {}
for devices in (1, n):
    params = {**DEFAULTS["train"], "epochs": 1, "devices": devices, "precision": "float32"}
    if reduced:
        params.update(embedding_dim=16, units=32, output_units=32, attention_heads=2)
    _, summary = fit_decoder(data, params, 0, live_dir=None, verbose=0)
    rates[devices] = summary["captions_per_second"]
print(json.dumps(rates))
"""


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure stop the check with one line naming it and its last error line."""
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        sys.exit(f"error: `{' '.join(cmd[:4])} ...` failed ({done.returncode}): {last}")
    return done


def environment() -> dict:
    """Versions, GPUs with compute capability, and the precision `auto` resolves to here."""
    import keras
    import tensorflow as tf

    from captioner.core.precision import resolve_precision

    build = tf.sysconfig.get_build_info()
    gpus = [
        {"name": details.get("device_name", gpu.name), "compute_capability": ".".join(map(str, details.get("compute_capability", ())))}
        for gpu in tf.config.list_physical_devices("GPU")
        for details in [tf.config.experimental.get_device_details(gpu)]
    ]
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "cuda": build.get("cuda_version"),
        "cudnn": build.get("cudnn_version"),
        "gpus": gpus,
        "precision_auto": resolve_precision("auto"),
    }


def sample_repro(work: Path, reduced: bool) -> dict:
    """`dvc repro` of the embedded sample in a fresh git repo copied from the project; its train metrics."""
    repo = work / "project"
    repo.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in (REDUCED_PARAMS if reduced else FULL_PARAMS).items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "check@example.com"],
                ["git", "config", "user.name", "gpu check"], ["git", "add", "-A"], ["git", "commit", "-qm", "check"]):
        run(cmd, repo)
    start = time.perf_counter()
    log = run([sys.executable, "-m", "dvc", "repro"], repo).stdout
    rate = re.search(r"([\d.]+) captions/s", log)  # the train stage prints it (metrics files hold no timings)
    train = json.loads((repo / f"metrics/members/{params['members'][0]}/train.json").read_text())
    scores = json.loads((repo / "metrics/eval.json").read_text())
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "repo": repo,
        "train_precision": train["precision"],
        "train_captions_per_second": float(rate.group(1)) if rate else None,
        "epochs_run": train["epochs_run"],
        "litert_export": (repo / "models/captioner/captioner.tflite").is_file(),
        "test_bleu4": scores["bleu4"],
        "test_cider": scores["cider"],
    }


def predict(repo: Path) -> dict:
    """`captioner predict` on LiteRT with the bundle the repro trained, on the sample's first image."""
    image = sorted((repo / "data/raw/Images").iterdir())[0]
    start = time.perf_counter()
    done = run([sys.executable, "-m", "captioner.cli", "predict", str(image), "--model", "models/captioner",
                "--runtime", "litert", "--json"], repo)
    first = json.loads(done.stdout)[0]
    return {"seconds": round(time.perf_counter() - start, 1), "image": image.name, "caption": first["caption"]}


def train_speed(sizes: tuple[int, ...]) -> dict:
    """Captions/s of the default decoder (5 captions per image, batches of 160) in float32 and bfloat16."""
    import train as bench

    bench.N_IMAGES = sizes[0]
    data = bench.synthetic()
    rates = {}
    for precision in ("float32", "bfloat16"):
        seen, seconds = bench.timed_steps(*bench.build(data, (5, 160, precision, 512)), sizes[1], sizes[2])
        rates[precision] = round(seen / seconds, 1)
    return rates


def extraction_speed(work: Path, sizes: tuple[int, ...]) -> dict:
    """Images/s of the extraction pipeline (decode, resize, batched efficientnet_lite0) on synthetic JPEGs."""
    from features import pipeline_rate, synthetic_images

    from captioner.vision.encoders import build_encoder, get_spec

    folder = work / "images"
    folder.mkdir()
    paths = synthetic_images(folder, sizes[3])
    model = build_encoder("efficientnet_lite0", "imagenet", "grid")
    size = get_spec("efficientnet_lite0").input_size
    pipeline_rate(model, paths[: sizes[4]], size, sizes[4])  # warm-up: traces the model
    return {"images": len(paths), "images_per_second": round(pipeline_rate(model, paths, size, sizes[4]), 1)}


def several_devices(n_gpus: int, reduced: bool, sizes: tuple[int, ...]) -> dict:
    """One epoch on one device and on all (MirroredStrategy): captions/s of each; skipped with one GPU."""
    n = n_gpus if n_gpus > 1 else 2 if reduced else 0
    if not n:
        return {"skipped": "one GPU: MirroredStrategy needs two or more"}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    images = sizes[0] if not reduced else 40
    done = run([sys.executable, "-c", DEVICES_RUN, str(n), "1" if reduced else "0", str(images)], ROOT, env)
    rates = json.loads(done.stdout.strip().splitlines()[-1])
    return {"devices": n, "captions_per_second": rates, "devices_kind": "logical CPU" if reduced else "GPU"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reduced", action="store_true", help="small sizes (the mode without a GPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    env = environment()
    reduced = args.reduced or not env["gpus"]
    report: dict = {"environment": env, "mode": "reduced" if reduced else "full"}
    if not env["gpus"]:
        print("no GPU visible to TensorFlow: running the reduced check on the CPU")
    gpus = ", ".join(f"{g['name']} (compute capability {g['compute_capability']})" for g in env["gpus"]) or "none"
    print(f"TensorFlow {env['tensorflow']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), Keras {env['keras']}; "
          f"GPUs: {gpus}; precision auto -> {env['precision_auto']}")
    sizes = REDUCED_SIZES if reduced else FULL_SIZES
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        repro = sample_repro(work, reduced)
        print(f"sample dvc repro: {repro['seconds']} s, trained in {repro['train_precision']} at "
              f"{repro['train_captions_per_second']} captions/s, LiteRT export: {repro['litert_export']}, "
              f"test BLEU-4 {repro['test_bleu4']:.3f} CIDEr-D {repro['test_cider']:.3f}")
        report["predict"] = predict(repro.pop("repo"))
        report["sample_repro"] = repro
        print(f"captioner predict (LiteRT): {report['predict']['seconds']} s: {report['predict']['caption']!r}")
        report["train_captions_per_second"] = train_speed(sizes)
        print(f"train, default decoder, {sizes[0]} synthetic images: "
              + ", ".join(f"{k} {v} captions/s" for k, v in report["train_captions_per_second"].items()))
        report["extraction"] = extraction_speed(work, sizes)
        print(f"extraction (efficientnet_lite0): {report['extraction']['images_per_second']} images/s")
        report["several_devices"] = several_devices(len(env["gpus"]), reduced, sizes)
        print(f"several devices: {report['several_devices']}")
    if args.json:
        from captioner.core.atomic import write_json

        write_json(args.json, report)


if __name__ == "__main__":
    main()
