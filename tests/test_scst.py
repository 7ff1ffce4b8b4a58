"""Self-critical training: the CIDEr-D reward, the policy-gradient batch, sampling, and the fine-tuning loop."""

import json
import time

import numpy as np
import pytest

from captioner.model.cider import CiderD
from captioner.model.scst import policy_batch
from captioner.data.text import END_ID, PAD_ID, START_ID, UNK_ID

REFS = [
    ["a dog runs on the grass", "a brown dog running through a field", "the dog is running outside"],
    ["two children play in the snow", "kids playing in snow", "two young children are playing in the white snow"],
    ["a man rides a bike down the road", "a cyclist on a street", "a man riding his bicycle on a road"],
    ["a woman sits on a bench", "a lady is sitting on a park bench", "woman resting on a wooden bench"],
]


def test_cider_d_matches_pycocoevalcap_per_caption():
    from pycocoevalcap.cider.cider import Cider

    hyps = ["a dog runs through the grass", "children in the snow", "a man on a bench", "the the the"]
    _, expected = Cider().compute_score({i: r for i, r in enumerate(REFS)}, {i: [h] for i, h in enumerate(hyps)})
    assert CiderD(REFS).scores(range(4), hyps) == pytest.approx(expected, rel=1e-5)
    # the reward follows the references: the right image's words score far above another image's
    reward = CiderD(REFS)
    assert reward.score(0, "a dog running on the grass") > 5 * reward.score(1, "a dog running on the grass")
    assert reward.score(2, "") == 0.0


def test_policy_batch_weights_each_sample_by_its_advantage():
    samples = np.array(
        [[5, 6, END_ID, PAD_ID], [5, END_ID, PAD_ID, PAD_ID], [7, 7, 7, 7], [8, END_ID, PAD_ID, PAD_ID]], dtype=np.int32
    )
    rewards = np.array([1.0, 0.0, 0.5, 0.5], dtype=np.float32)  # two images, k = 2
    inputs, targets, weights = policy_batch(samples, rewards, k=2)
    np.testing.assert_array_equal(inputs[:, 0], START_ID)
    np.testing.assert_array_equal(inputs[:, 1:], samples[:, :3])
    np.testing.assert_array_equal(targets, samples)
    tokens = (samples != PAD_ID).sum()
    # advantage = reward - mean of the image's other samples: +1, -1, 0, 0; spread over real tokens only
    np.testing.assert_allclose(weights[0], [1 / tokens] * 3 + [0.0])
    np.testing.assert_allclose(weights[1], [-1 / tokens] * 2 + [0.0, 0.0])
    np.testing.assert_array_equal(weights[2:], 0.0)


def test_sampling_is_seeded_banned_free_and_padded_after_end():
    pytest.importorskip("keras")
    from test_decode import make, set_bias

    from captioner.model.decode import CaptionDecoder

    model, images = make("inject", seed=2)
    set_bias(model, [PAD_ID, START_ID, UNK_ID], 50.0)
    dec = CaptionDecoder(model, max_length=8)
    first = dec.sample(images, 4, np.random.default_rng(0))
    assert first.shape == (len(images) * 4, 7)
    np.testing.assert_array_equal(first, dec.sample(images, 4, np.random.default_rng(0)))
    assert not np.array_equal(first, dec.sample(images, 4, np.random.default_rng(1)))
    assert not {START_ID, UNK_ID} & set(first.ravel().tolist())
    for row in first:
        ends = np.flatnonzero(row == END_ID)
        real = ends[0] + 1 if len(ends) else len(row)
        assert (row[:real] != PAD_ID).all() and (row[real:] == PAD_ID).all()
    # k samples of one image differ (the model is sampled, not argmaxed)
    assert len({tuple(r) for r in first[:4]}) > 1


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    pytest.importorskip("keras")
    from helpers_model import make_dataset

    root = tmp_path_factory.mktemp("scst")
    make_dataset(root, noise=1.0)
    return root


def test_self_critical_keeps_the_best_val_cider_and_writes_its_summary(problem):
    from helpers_model import small_params
    from test_train_eval import train

    params = small_params("inject", scst={"epochs": 3, "learning_rate": 0.003, "samples": 4, "batch_images": 16},
                          epochs=4)
    train(problem, params)
    summary = json.loads((problem / "metrics/finetune.json").read_text())
    run = summary["epochs_run"]
    assert 1 <= run <= 3
    for key in ("val_cider", "val_bleu4", "train_reward", "sample_words"):
        assert len(summary[key]) == run
    best = summary["best_epoch"]
    ciders = [summary["start_val_cider"], *summary["val_cider"]]
    bleus = [summary["start_val_bleu4"], *summary["val_bleu4"]]
    assert ciders[best] == max(ciders) == summary["best_val_cider"] and bleus[best] == summary["best_val_bleu4"]
    if run < 3:  # it stopped early only because the last epoch lost val CIDEr-D
        assert ciders[-1] <= max(ciders[:-1])
    curves = problem / "dvclive/finetune/plots/metrics"  # DVCLive: step 0 is the cross-entropy model
    for key in ("val_cider", "val_bleu4"):
        rows = (curves / f"{key}.tsv").read_text().splitlines()
        assert [float(r.split("\t")[-1]) for r in rows[1:]] == pytest.approx([summary[f"start_{key}"], *summary[key]])
    for key in ("train_reward", "sample_words"):
        rows = (curves / f"{key}.tsv").read_text().splitlines()
        assert [float(r.split("\t")[-1]) for r in rows[1:]] == pytest.approx(summary[key])

    from captioner.model.bundle import load_bundle
    from captioner.model.decode import CaptionDecoder
    from captioner.vision.feature_store import load_features
    from captioner.model.scst import image_set, val_scores
    from captioner.model.training import load_train_data

    data = load_train_data(problem / "data/features", problem / "data/processed", "inject")
    captions = json.loads((problem / "data/processed/captions.json").read_text())
    bundle = load_bundle(problem / "models/captioner")
    _, features, _ = load_features(problem / "data/features/features.h5")
    val = image_set(data.val.image_rows, [captions[n] for n in data.image_names])
    saved = val_scores(CaptionDecoder(bundle.model, bundle.vocab.max_length), features, val, bundle.vocab)
    assert saved[0] == pytest.approx(ciders[best], abs=1e-3)  # the saved bundle holds the kept weights
    assert saved[1] == pytest.approx(bleus[best], abs=1e-3)


def test_self_critical_stops_at_the_stage_time_cap(problem):
    from helpers_model import small_params
    from test_train_eval import train

    params = small_params("inject", scst={"epochs": 50, "max_minutes": 0.01}, epochs=1)
    start = time.monotonic()
    train(problem, params)
    summary = json.loads((problem / "metrics/finetune.json").read_text())
    assert summary["time_cap_hit"] and summary["epochs_run"] < 50
    assert time.monotonic() - start < 60
