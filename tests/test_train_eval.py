"""Train and evaluate stages on a tiny synthetic problem: learnability, outputs, one-line errors."""

import csv
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("keras")

from helpers_model import make_dataset, small_params  # noqa: E402

from captioner.core.errors import CaptionerError  # noqa: E402
from captioner.model.training import CLOCK_KEYS  # noqa: E402


def train(root, params):
    """The train stage (cross-entropy, into models/xe), then finetune (into the bundle models/captioner);
    returns the train stage's metrics."""
    from captioner.model.training import run_train

    summary = run_train(params, root / "data/features", root / "data/processed", root / "models/xe",
                        root / "metrics/train.json", str(root / "dvclive/train"), verbose=0)
    finetune(root, params)
    return summary


def finetune(root, params):
    """The finetune stage on models/xe: self-critical training (scst.epochs > 0) or a pass-through."""
    from captioner.model.finetune import run_finetune

    return run_finetune(params, root / "data/features", root / "data/processed", root / "models/xe",
                        root / "models/captioner", root / "metrics/finetune.json", str(root / "dvclive/finetune"))


def evaluate(root, params):
    from captioner.evaluation import run_evaluate

    return run_evaluate(params, root / "models/captioner", root / "data/features", root / "data/processed",
                        root / "data/raw", root / "metrics", progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    make_dataset(root)
    params = small_params("merge")
    return root, params, train(root, params)


def test_train_writes_bundle_metrics_and_curves(trained):
    root, _, summary = trained
    assert sorted(p.name for p in (root / "models/captioner").iterdir()) == ["config.json", "decoder.keras", "vocab.json"]
    written = json.loads((root / "metrics/train.json").read_text())
    assert written == {key: value for key, value in summary.items() if key not in CLOCK_KEYS}
    assert {"wall_seconds", "captions_per_second", "total_seconds"} <= set(summary)  # printed, not written
    for key in ("epochs_run", "best_epoch", "best_val_loss", "train_loss"):
        assert key in written
    assert 1 <= written["best_epoch"] <= written["epochs_run"] <= 12
    assert (root / "dvclive/train/plots/metrics/train/loss.tsv").is_file()
    assert (root / "dvclive/train/plots/metrics/eval/loss.tsv").is_file()
    config = json.loads((root / "models/captioner/config.json").read_text())
    assert config["encoder"]["name"] == "synthetic" and config["feature_shape"] == [24]


def test_trained_model_beats_untrained_by_far(trained):
    from captioner.serving.api import Captioner
    from captioner.model.bundle import load_bundle
    from captioner.vision.feature_store import load_features
    from captioner.model.metrics import caption_scores
    from captioner.model.decoders import DecoderSpec, build_decoder

    root, params, _ = trained
    scores = evaluate(root, params)
    bundle = load_bundle(root / "models/captioner")
    names, feats, _ = load_features(root / "data/features/features.h5")
    split = json.loads((root / "data/raw/splits.json").read_text())["test"]
    refs = json.loads((root / "data/processed/captions.json").read_text())
    bundle.model = build_decoder(DecoderSpec("merge", len(bundle.vocab), (24,), 16, 32, 0.1))  # untrained, same shape
    rows = [names.index(n) for n in split]
    captions = [r.caption for r in Captioner(bundle).caption_features(feats[rows], 3)]
    untrained = caption_scores({n: refs[n] for n in split}, dict(zip(split, captions)))
    assert scores["bleu4"] >= 0.5
    assert scores["bleu4"] >= 2 * untrained["bleu4"]


def test_evaluate_writes_metrics_predictions_and_figure(trained):
    root, params, _ = trained
    scores = evaluate(root, params)
    assert json.loads((root / "metrics/eval.json").read_text()) == scores
    assert {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "beam_size", "split", "n_images"} <= set(scores)
    assert scores["split"] == "test" and scores["n_images"] == 12 and scores["beam_size"] == 3
    with open(root / "metrics/predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and set(rows[0]) == {"image", "prediction", "references"}
    assert rows[0]["references"].count(" | ") == 4
    assert (root / "metrics/samples.png").read_bytes()[:4] == b"\x89PNG"


def test_empty_split_is_a_one_line_error(trained):
    root, params, _ = trained
    params = {**params, "evaluate": {**params["evaluate"], "split": "test"}}
    splits = json.loads((root / "data/raw/splits.json").read_text())
    (root / "data/raw/splits.json").write_text(json.dumps({**splits, "test": []}))
    try:
        with pytest.raises(CaptionerError, match="split 'test'.*evaluate.split: val") as err:
            evaluate(root, params)
        assert "\n" not in str(err.value)
    finally:
        (root / "data/raw/splits.json").write_text(json.dumps(splits))


def test_bundle_vocab_mismatch_is_a_one_line_error(trained, tmp_path):
    from captioner.model.bundle import load_bundle

    root, _, _ = trained
    bundle = tmp_path / "bundle"
    shutil.copytree(root / "models/captioner", bundle)
    vocab = json.loads((bundle / "vocab.json").read_text())
    vocab["tokens"].append("extra")
    vocab["size"] += 1
    (bundle / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CaptionerError, match=r"vocab.json: \d+ tokens but config.json says decoder.vocab_size") as err:
        load_bundle(bundle)
    assert "\n" not in str(err.value)
    (bundle / "decoder.keras").unlink()
    with pytest.raises(CaptionerError, match="lacks decoder.keras"):
        load_bundle(bundle)


def test_attention_with_pooled_features_is_a_one_line_error(trained):
    root, params, _ = trained
    bad = {**params, "train": {**params["train"], "decoder": "attention"}}
    with pytest.raises(CaptionerError, match="attention needs grid features.*features.output: grid") as err:
        train(root, bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("decoder", ["inject", "attention"])
def test_grid_features_train_every_decoder(decoder, tmp_path):
    make_dataset(tmp_path, grid=True)
    summary = train(tmp_path, small_params(decoder, epochs=2))
    assert summary["epochs_run"] == 2
    config = json.loads((tmp_path / "models/captioner/config.json").read_text())
    assert config["feature_shape"] == [2, 2, 24] and config["decoder"]["kind"] == decoder
    assert evaluate(tmp_path, small_params(decoder))["n_images"] == 12


def test_training_is_deterministic_and_respects_the_time_budget(tmp_path):
    make_dataset(tmp_path)
    first = train(tmp_path, small_params("merge", epochs=3))
    bundle = {p.name: p.read_bytes() for p in (tmp_path / "models/captioner").iterdir()}
    second = train(tmp_path, small_params("merge", epochs=3))
    assert {p.name: p.read_bytes() for p in (tmp_path / "models/captioner").iterdir()} == bundle
    assert first["best_val_loss"] == second["best_val_loss"]
    assert first["final_train_loss"] == second["final_train_loss"]
    stopped = train(tmp_path, small_params("merge", epochs=50, max_minutes=0.0001))
    assert stopped["stopped_by"] == "time_cap" and stopped["time_cap_hit"] and stopped["epochs_run"] == 1
    assert (tmp_path / "models/captioner/decoder.keras").is_file()
    assert np.isfinite(stopped["best_val_loss"])


def test_float32_attention_on_image_grouped_batches_with_self_critical_is_byte_identical(tmp_path):
    make_dataset(tmp_path, grid=True)
    params = small_params("attention", scst={"epochs": 1}, epochs=2, captions_per_image=5, batch_size=20)
    first = train(tmp_path, params)
    first_scst = json.loads((tmp_path / "metrics/finetune.json").read_text())
    bundle = {p.name: p.read_bytes() for p in (tmp_path / "models/captioner").iterdir()}
    xe = {p.name: p.read_bytes() for p in (tmp_path / "models/xe").iterdir()}
    second = train(tmp_path, params)
    assert {p.name: p.read_bytes() for p in (tmp_path / "models/xe").iterdir()} == xe
    assert {p.name: p.read_bytes() for p in (tmp_path / "models/captioner").iterdir()} == bundle
    for key in ("train_loss", "best_val_loss"):
        assert first[key] == second[key]
    second_scst = json.loads((tmp_path / "metrics/finetune.json").read_text())
    for key in ("val_cider", "train_reward", "best_val_cider"):
        assert first_scst[key] == second_scst[key]


def test_finetune_off_passes_the_cross_entropy_model_through(trained):
    root, params, _ = trained
    xe = (root / "models/xe/decoder.keras").read_bytes()
    assert (root / "models/captioner/decoder.keras").read_bytes() == xe
    summary = json.loads((root / "metrics/finetune.json").read_text())
    assert summary["epochs_run"] == 0 and not (root / "dvclive/finetune").exists()


def test_bfloat16_training_with_self_critical_saves_a_float32_bundle(tmp_path):
    from captioner.model.bundle import load_bundle

    make_dataset(tmp_path, grid=True)
    summary = train(tmp_path, small_params("attention", scst={"epochs": 1, "precision": "bfloat16"}, epochs=2,
                                           captions_per_image=5, batch_size=20, precision="bfloat16"))
    scst = json.loads((tmp_path / "metrics/finetune.json").read_text())
    assert summary["precision"] == "bfloat16" and scst["precision"] == "bfloat16" and scst["epochs_run"] == 1
    assert summary["train_loss"][-1] < summary["train_loss"][0]
    for folder in ("models/xe", "models/captioner"):
        model = load_bundle(tmp_path / folder).model
        assert all(w.dtype == "float32" for w in model.weights)
        assert {layer.dtype_policy.name for layer in model.layers if layer.weights} == {"float32"}
