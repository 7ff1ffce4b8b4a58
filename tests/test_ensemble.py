"""Ensembles: per-word probabilities averaged inside the batched beam search, on Keras and LiteRT; ensemble bundles
(assemble, format 2, load, caption) and the members' agreement checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("keras")

from captioner.core.errors import CaptionerError  # noqa: E402
from captioner.data.text import END_ID, Vocabulary  # noqa: E402
from captioner.model.bundle import load_bundle, make_config, read_config, save_bundle  # noqa: E402
from captioner.model.decode import CaptionDecoder  # noqa: E402
from captioner.model.decoders import DecoderSpec, build_decoder  # noqa: E402
from captioner.model.ensemble import assemble, assemble_members  # noqa: E402

GRID = (2, 2, 8)
WORDS = ["a red circle on grass", "a blue square on a white table", "two green dogs run"]


def shape_of(kind: str) -> tuple[int, ...]:
    return GRID if kind == "attention" else GRID[-1:]


def member(kind: str, seed: int, vocab_size: int, units: int = 16):
    """A tiny untrained decoder with definite preferences (scaled logits, <end> late) and sharp attention."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_decoder(DecoderSpec(kind, vocab_size, shape_of(kind), 8, units, 0.0, heads=2))
    kernel, bias = model.get_layer("logits").get_weights()
    bias[END_ID] = -3.0
    model.get_layer("logits").set_weights([kernel * 6, bias])
    if kind == "attention":
        for name in ("attend", "grid_keys"):
            model.get_layer(name).set_weights([w * 6 for w in model.get_layer(name).get_weights()])
    return model


def features(kind: str, n: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape_of(kind))).astype(np.float32)


def vocab(extra: str = "") -> Vocabulary:
    return Vocabulary.build([*WORDS, extra] if extra else WORDS, min_count=1, max_length_percentile=100)


def member_bundle(path, seed: int, kind: str = "attention", voc: Vocabulary | None = None, encoder: str = "synthetic",
                  units: int = 16):
    """A bundle of one tiny decoder on features from an encoder outside the registry (no LiteRT file)."""
    voc = voc or vocab()
    output = "grid" if kind == "attention" else "pooled"
    config = make_config({"name": encoder, "weights": "none", "input_size": 32, "output": output}, shape_of(kind),
                         {"kind": kind, "embedding_dim": 8, "units": units, "dropout": 0.0, "vocab_size": len(voc)},
                         {"beam_size": 3, "max_length": voc.max_length, "length_alpha": 1.0})
    save_bundle(path, member(kind, seed, len(voc), units), voc, config)
    return path


def search(decoder, feats, beam: int = 3):
    return decoder.beam_search(feats, beam)


@pytest.mark.parametrize("kind", ["attention", "merge", "inject"])
def test_an_ensemble_of_one_member_decodes_exactly_like_the_member(kind):
    model = member(kind, 0, 20)
    feats = features(kind)
    alone = search(CaptionDecoder(model, 10, attention=True, compiled=False), feats)
    ensemble = search(CaptionDecoder([model], 10, attention=True, compiled=False), feats)
    assert [b.ids for b in ensemble] == [b.ids for b in alone]
    assert [b.log_probs for b in ensemble] == [b.log_probs for b in alone]  # bit for bit
    assert any(len(ids) > 1 for b in alone for ids in b.ids)
    if kind == "attention":
        for one, other in zip(ensemble, alone):
            assert all(np.array_equal(x, y) for x, y in zip(one.attention, other.attention))


def test_a_step_averages_the_members_probabilities():
    from captioner.model.decoders import ensemble_step_models, step_models

    models = [member("attention", seed, 20, units) for seed, units in ((0, 16), (1, 8), (2, 12))]
    ensemble = ensemble_step_models(models)
    feats = features("attention", n=4)
    parts = [step_models(m) for m in models]
    states = [[np.asarray(t) for t in p.init(feats)] for p in parts]
    rng = np.random.default_rng(3)
    tokens = rng.integers(4, 20, size=(4, 1)).astype(np.int32)
    states = [[s + rng.normal(scale=0.3, size=s.shape).astype(np.float32) for s in st] for st in states]  # mid-caption
    outs = [[np.asarray(t) for t in p.step([tokens, *st])] for p, st in zip(parts, states)]
    joined = [np.concatenate([st[j] for st in states], axis=-1) for j in (0, 1)]  # h, c; contexts one after another
    contexts = [x for st in states for x in st[2:]]
    log_p, h, c, attention = (np.asarray(t) for t in ensemble.step([tokens, *joined, *contexts]))

    expected = np.log(np.mean([np.exp(out[0]) for out in outs], axis=0))  # mean of probabilities, then log
    np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-5)
    mean_log = np.mean([out[0] for out in outs], axis=0)  # what averaging log-probabilities would give instead
    assert np.abs(log_p - mean_log).max() > 1e-2
    np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(h, np.concatenate([out[1] for out in outs], axis=-1))
    np.testing.assert_array_equal(c, np.concatenate([out[2] for out in outs], axis=-1))
    np.testing.assert_allclose(attention, np.mean([out[3] for out in outs], axis=0), rtol=1e-6, atol=1e-7)
    inits = [[np.asarray(t) for t in p.init(feats)] for p in parts]
    want = [np.concatenate([i[0] for i in inits], axis=-1), np.concatenate([i[1] for i in inits], axis=-1),
            *(x for i in inits for x in i[2:])]
    got = [np.asarray(t) for t in ensemble.init(feats)]
    assert len(got) == len(want) == 2 + 3 * 3
    for one, other in zip(got, want):
        np.testing.assert_array_equal(one, other)


def test_a_flip_step_maps_the_mirrored_views_words_and_cells_back_before_the_mean():
    """decoding.flip: one decoder reads each image as it is and mirrored; the mirrored view reads and scores words
    with `left`/`right` swapped and attends over mirrored cells, so both are mapped back before the mean."""
    from captioner.data.text import mirror_ids
    from captioner.model.decoders import ensemble_step_models, step_models

    voc = vocab("a dog turns left then right")
    table = mirror_ids(voc)
    left, right = voc.index["left"], voc.index["right"]
    assert table[left] == right and table[right] == left and table[voc.index["dog"]] == voc.index["dog"]
    model = member("attention", 0, len(voc))
    flip, one = ensemble_step_models([model], mirror=table), step_models(model)
    plain, mirrored = features("attention", n=4, seed=1), features("attention", n=4, seed=2)
    states = [[np.asarray(t) for t in one.init(x)] for x in (plain, mirrored)]
    joined = [np.concatenate([st[j] for st in states], axis=-1) for j in (0, 1)]
    contexts = [x for st in states for x in st[2:]]
    got = [np.asarray(t) for t in flip.init(np.stack([plain, mirrored], axis=1))]
    for one_part, other in zip(got, [*joined, *contexts], strict=True):
        np.testing.assert_allclose(one_part, other, rtol=1e-6, atol=1e-6)

    tokens = np.array([[left], [right], [voc.index["dog"]], [voc.index["a"]]], dtype=np.int32)
    outs = [[np.asarray(t) for t in one.step([tokens, *states[0]])],
            [np.asarray(t) for t in one.step([table[tokens], *states[1]])]]  # the mirrored view reads `right` for `left`
    log_p, _, _, attention = (np.asarray(t) for t in flip.step([tokens, *joined, *contexts]))
    words = outs[1][0][:, table]  # p(word) for the image = p(its mirror word) in the mirrored view
    np.testing.assert_allclose(log_p, np.log((np.exp(outs[0][0]) + np.exp(words)) / 2), rtol=1e-5, atol=1e-5)
    unmapped = np.log((np.exp(outs[0][0]) + np.exp(outs[1][0])) / 2)
    assert np.abs(log_p - unmapped)[:, [left, right]].max() > 1e-3 and np.abs(log_p - unmapped)[:, :left].max() < 1e-5
    cells = outs[1][3].reshape(4, 2, 2)[:, :, ::-1].reshape(4, 4)  # the mirrored view's map, columns reversed
    np.testing.assert_allclose(attention, (outs[0][3] + cells) / 2, rtol=1e-5, atol=1e-6)


def test_litert_and_keras_decode_a_two_member_ensemble_alike(tmp_path):
    pytest.importorskip("ai_edge_litert")
    import keras

    from captioner.model.litert import LiteDecoder, LiteRuntime, litert_bytes

    models = [member("attention", 0, 20), member("attention", 1, 20, units=12)]
    image = keras.Input((8, 8, 3), name="image")  # a tiny stand-in encoder: 8x8 photos -> the 2x2x8 grid
    grid = keras.layers.Dense(8, name="cells")(keras.layers.AveragePooling2D(4, name="pool")(image))
    path = tmp_path / "ensemble.tflite"
    path.write_bytes(litert_bytes(keras.Model(image, grid), models))
    feats = features("attention", n=6)
    lite = search(LiteDecoder(LiteRuntime(path, threads=1), 10, attention=True), feats)
    tf = search(CaptionDecoder(models, 10, attention=True, compiled=False), feats)
    assert [b.ids for b in lite] == [b.ids for b in tf]
    np.testing.assert_allclose([b.log_probs for b in lite], [b.log_probs for b in tf], atol=1e-3)
    for one, other in zip(lite, tf):
        for x, y in zip(one.attention, other.attention):
            np.testing.assert_allclose(x, y, atol=1e-3)
    alone = search(CaptionDecoder(models[0], 10, compiled=False), feats)
    assert [b.ids for b in alone] != [b.ids for b in tf]  # the second member counts


def test_an_ensemble_bundle_round_trips(tmp_path):
    from captioner.serving.api import Captioner

    members = [member_bundle(tmp_path / f"m{i}", seed=i, units=16 - 4 * i) for i in range(3)]
    config = assemble(members, tmp_path / "ens", litert=False)
    files = sorted(p.name for p in (tmp_path / "ens").iterdir())
    assert files == ["config.json", "decoder.keras", "decoder_2.keras", "decoder_3.keras", "vocab.json"]
    assert config["format"] == 2 and config["members"] == ["decoder.keras", "decoder_2.keras", "decoder_3.keras"]
    assert json.loads((tmp_path / "ens/config.json").read_text()) == config
    for i, name in enumerate(config["members"]):  # copied byte for byte
        assert (tmp_path / "ens" / name).read_bytes() == (members[i] / "decoder.keras").read_bytes()

    bundle = load_bundle(tmp_path / "ens")
    assert bundle.member_count == 3 and len(bundle.decoders) == 3
    feats = features("attention")
    captioner = Captioner(bundle, compiled=False)
    assert captioner.describe()["members"] == 3
    got = captioner.caption_features(feats)
    direct = search(CaptionDecoder([load_bundle(m).model for m in members], bundle.vocab.max_length, attention=True,
                                   compiled=False), feats)
    assert [c.caption for c in got] == [bundle.vocab.decode(b.ids[0]) for b in direct]
    assert [c.log_prob for c in got] == [b.log_probs[0] for b in direct]
    assert got[0].attention.shape == (len(got[0].words), 2, 2)
    single = Captioner(load_bundle(members[0]), compiled=False)
    assert single.describe()["members"] == 1
    assert [c.caption for c in single.caption_features(feats)] != [c.caption for c in got]


def test_one_member_gives_a_copy_in_the_single_decoder_format(tmp_path):
    from captioner.serving.api import Captioner

    source = member_bundle(tmp_path / "m", seed=0)
    config = assemble([source], tmp_path / "copy", litert=False)
    assert "members" not in config and config["format"] == 1
    for name in ("decoder.keras", "config.json", "vocab.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (source / name).read_bytes()
    feats = features("attention")
    one, other = (Captioner(load_bundle(d), compiled=False).caption_features(feats) for d in (source, tmp_path / "copy"))
    assert [(c.caption, c.log_prob) for c in one] == [(c.caption, c.log_prob) for c in other]


@pytest.mark.parametrize("litert", [True, False])
def test_one_member_keeps_its_own_litert_file_byte_for_byte(tmp_path, litert):
    source = member_bundle(tmp_path / "m", seed=0)
    (source / "captioner.tflite").write_bytes(b"the member's own LiteRT file")  # copied, never converted again
    assemble([source], tmp_path / "copy", litert=litert)
    copied = {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()}
    own = {p.name: p.read_bytes() for p in source.iterdir() if litert or p.name != "captioner.tflite"}
    assert copied == own


def test_the_assemble_stage_takes_the_members_seeds_in_order_and_its_length_alpha(tmp_path):
    from captioner.serving.api import Captioner

    for seed in (7, 3):
        member_bundle(tmp_path / "members" / str(seed), seed=seed)
    params = {"members": [7, 3], "scst": {"litert": False}, "assemble": {"length_alpha": 0.5, "flip": False}}
    config = assemble_members(params, tmp_path / "members", tmp_path / "bundle")
    assert config["members"] == ["decoder.keras", "decoder_2.keras"]
    assert read_config(tmp_path / "bundle")["decoding"]["length_alpha"] == 0.5  # members were trained with 1.0
    for name, seed in (("decoder.keras", 7), ("decoder_2.keras", 3)):
        member_file = tmp_path / "members" / str(seed) / "decoder.keras"
        assert (tmp_path / "bundle" / name).read_bytes() == member_file.read_bytes()
    assemble_members({**params, "members": [3]}, tmp_path / "members", tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["config.json", "decoder.keras", "vocab.json"]
    alone = read_config(tmp_path / "bundle")
    assert alone["decoding"]["length_alpha"] == 0.5 and alone == {**read_config(tmp_path / "members" / "3"),
                                                                  "decoding": alone["decoding"]}
    feats = features("attention")
    bundle, member = (Captioner(load_bundle(d), compiled=False) for d in (tmp_path / "bundle", tmp_path / "members/3"))
    ranked = [(c.caption, c.score) for c in bundle.caption_features(feats)]  # score: log p / length**alpha
    assert ranked == [(c.caption, c.score) for c in member.caption_features(feats, length_alpha=0.5)]
    assert ranked != [(c.caption, c.score) for c in member.caption_features(feats)]
    with pytest.raises(CaptionerError, match=r"members/5: no bundle of member 5 \(its stages: dvc repro finetune@5\)$"):
        assemble_members({**params, "members": [7, 5]}, tmp_path / "members", tmp_path / "bundle")
    flipped = assemble_members({**params, "members": [3], "assemble": {"length_alpha": 1.0, "flip": True}},
                               tmp_path / "members", tmp_path / "flipped")
    assert flipped["decoding"]["flip"] is True and load_bundle(tmp_path / "flipped").input_shape == (2, *GRID)
    plain = assemble([tmp_path / "flipped"], tmp_path / "plain", litert=False, flip=False)
    assert "flip" not in plain["decoding"] and plain == read_config(tmp_path / "members" / "3")
    with pytest.raises(CaptionerError, match=r"features of shape \(2, 2, 8\) but the decoder reads \(2, 2, 2, 8\) "
                                             r"\(each image as it is and mirrored: decoding.flip\)$"):
        Captioner(load_bundle(tmp_path / "flipped"), compiled=False).caption_features(feats)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(voc=vocab("a purple hat")), r"m2 \(member 2\): its vocabulary has \d+ tokens, member 1's \d+"),
        (dict(encoder="other"), r"m2 \(member 2\): encoder.name is 'other', member 1's 'synthetic'"),
        (dict(kind="merge"), r"m2 \(member 2\): encoder.output is 'pooled', member 1's 'grid'"),
    ],
)
def test_members_that_disagree_are_a_one_line_error_naming_the_member(tmp_path, change, message):
    first = member_bundle(tmp_path / "m1", seed=0)
    second = member_bundle(tmp_path / "m2", seed=1, **change)
    with pytest.raises(CaptionerError, match=message) as err:
        assemble([first, second], tmp_path / "ens", litert=False)
    assert "\n" not in str(err.value) and not (tmp_path / "ens").exists()


def test_same_size_vocabularies_that_differ_name_the_first_token(tmp_path):
    voc = vocab()
    swapped = Vocabulary(tokens=(*voc.tokens[:-2], voc.tokens[-1], voc.tokens[-2]), max_length=voc.max_length)
    first, second = member_bundle(tmp_path / "m1", 0), member_bundle(tmp_path / "m2", 1, voc=swapped)
    with pytest.raises(CaptionerError, match=rf"member 2\): its vocabulary differs from member 1's \(token {len(voc) - 2} "):
        assemble([first, second], tmp_path / "ens", litert=False)


def test_bad_places_and_nested_ensembles_are_refused(tmp_path):
    first, second = member_bundle(tmp_path / "m1", 0), member_bundle(tmp_path / "m2", 1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/todo.txt").write_text("keep me")
    for members, out, message in [
        ([first, second], first, r"the output is member 1's folder"),
        ([first, first], tmp_path / "ens", r"given twice \(member 1 and 2\)"),
        ([first, second], tmp_path / "notes", r"exists and is not a model bundle"),
        ([], tmp_path / "ens", r"takes 1 to 16 member bundles, got 0"),
    ]:
        with pytest.raises(CaptionerError, match=message):
            assemble(members, out, litert=False)
    assert (tmp_path / "notes/todo.txt").read_text() == "keep me"
    assemble([first, second], tmp_path / "ens", litert=False)
    with pytest.raises(CaptionerError, match=r"ens: already an ensemble of 2 decoders"):
        assemble([tmp_path / "ens", first], tmp_path / "ens2", litert=False)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("members"), r"'members' must list 2 to 16 decoder files, got None"),
        (lambda c: c.update(members=["decoder.keras"]), r"'members' must list 2 to 16"),
        (lambda c: c.update(members=["decoder.keras", "../m1/decoder.keras"]), r"entry 2 '../m1/decoder.keras' is not"),
        (lambda c: c.update(members=["decoder.keras", "decoder_9.keras"]), r"lacks decoder_9.keras \(ensemble member 2\)"),
        (lambda c: c.update(members=["decoder_2.keras", "decoder.keras"]), r"must start with decoder.keras"),
        (lambda c: c.update(format=1), r"'members' needs bundle format 2, not 1"),
        (lambda c: c.update(format=3), r"bundle format 3, expected 1 or 2"),
    ],
)
def test_the_members_list_is_checked_before_any_model_loads(tmp_path, edit, message):
    assemble([member_bundle(tmp_path / "m1", 0), member_bundle(tmp_path / "m2", 1)], tmp_path / "ens", litert=False)
    config = json.loads((tmp_path / "ens/config.json").read_text())
    edit(config)
    (tmp_path / "ens/config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionerError, match=message) as err:
        read_config(tmp_path / "ens")
    assert "\n" not in str(err.value)


def test_a_broken_member_file_is_named(tmp_path):
    assemble([member_bundle(tmp_path / "m1", 0), member_bundle(tmp_path / "m2", 1)], tmp_path / "ens", litert=False)
    shutil.copyfile(member_bundle(tmp_path / "m3", 2, kind="merge") / "decoder.keras", tmp_path / "ens/decoder_2.keras")
    with pytest.raises(CaptionerError, match=r"config.json says decoder 'attention' but decoder_2.keras is 'merge'"):
        load_bundle(tmp_path / "ens")


@pytest.fixture(scope="module")
def photo_ensemble(tmp_path_factory):
    """Two tiny decoders on efficientnet_lite0, made one bundle by `captioner ensemble` (with captioner.tflite)."""
    pytest.importorskip("ai_edge_litert")
    from captioner.cli import main
    from helpers_bundle import make_bundle, make_photo

    tmp = tmp_path_factory.mktemp("ensemble")
    members = [str(make_bundle(tmp / f"m{i}", seed=i)) for i in range(2)]
    with pytest.raises(SystemExit) as done:
        main(["ensemble", *members, "--out", str(tmp / "ens"), "--length-alpha", "0.5"])
    assert done.value.code == 0 and (tmp / "ens/captioner.tflite").is_file()
    assert read_config(tmp / "ens")["decoding"]["length_alpha"] == 0.5  # both runtimes below rank with it
    with pytest.raises(SystemExit) as refused:
        main(["ensemble", *members, "--out", str(tmp / "bad"), "--length-alpha", "-1"])
    assert refused.value.code != 0 and not (tmp / "bad").exists()
    return {"bundle": tmp / "ens", "members": members, "photo": make_photo(tmp / "photo.jpg"), "tmp": tmp}


def predict_json(photo_ensemble, runtime: str, capsys) -> dict:
    from captioner.cli import main

    explain = photo_ensemble["tmp"] / f"explain-{runtime}"
    with pytest.raises(SystemExit) as done:
        main(["predict", str(photo_ensemble["photo"]), "--model", str(photo_ensemble["bundle"]), "--json",
              "--runtime", runtime, "--explain", str(explain)])
    assert done.value.code == 0 and (explain / "photo.png").stat().st_size > 0
    return json.loads(capsys.readouterr().out)[0]


def test_predict_captions_with_an_ensemble_bundle_alike_on_both_runtimes(photo_ensemble, capsys):
    from captioner.serving.api import Captioner

    lite, keras_answer = (predict_json(photo_ensemble, runtime, capsys) for runtime in ("litert", "keras"))
    assert lite["caption"] == keras_answer["caption"]
    assert lite["log_prob"] == pytest.approx(keras_answer["log_prob"], abs=1e-3)
    alone = Captioner.load(photo_ensemble["members"][0], runtime="keras").caption(photo_ensemble["photo"])[0]
    assert alone.caption != keras_answer["caption"]


def test_a_flip_bundle_encodes_both_views_and_captions_alike_on_both_runtimes(photo_ensemble, capsys):
    """`captioner ensemble --flip`: the encoder also runs on the mirrored pixels (as extraction does) and the bundle's
    captioner.tflite takes both views, so LiteRT and Keras give the same captions and attention maps."""
    from captioner.cli import main
    from captioner.serving.api import Captioner
    from captioner.vision.photos import photo_input

    out = photo_ensemble["tmp"] / "flip"
    with pytest.raises(SystemExit) as done:
        main(["ensemble", photo_ensemble["members"][0], "--flip", "--out", str(out)])
    assert done.value.code == 0 and "reading each image as it is and mirrored" in capsys.readouterr().out
    assert read_config(out)["decoding"]["flip"] is True
    keras_flip, lite_flip = (Captioner.load(out, runtime=r) for r in ("keras", "litert"))
    alone = Captioner.load(photo_ensemble["members"][0], runtime="keras")
    inputs = photo_input(photo_ensemble["photo"].read_bytes(), alone.input_size)[None]
    views = keras_flip.encode([photo_ensemble["photo"]])
    assert views.shape == (1, 2, 7, 7, 1280) and keras_flip.describe()["flip"] is True
    np.testing.assert_array_equal(views[:, 0], alone.encode([photo_ensemble["photo"]]))
    np.testing.assert_array_equal(views[:, 1], alone._encode(inputs[:, :, ::-1]))  # mirrored as extraction does
    one, other = (c.caption([photo_ensemble["photo"]])[0] for c in (keras_flip, lite_flip))
    assert one.caption == other.caption and one.log_prob == pytest.approx(other.log_prob, abs=1e-3)
    assert one.attention.shape == (len(one.words), 7, 7)
    np.testing.assert_allclose(one.attention, other.attention, atol=1e-3)
    assert one.log_prob != pytest.approx(alone.caption([photo_ensemble["photo"]])[0].log_prob, abs=1e-4)


def test_serve_captions_with_an_ensemble_bundle(photo_ensemble):
    import httpx

    from captioner.serving.api import Captioner
    from captioner.serving.server import create_app
    from helpers_server import running_server

    captioner = Captioner.load(photo_ensemble["bundle"])
    expected = captioner.caption(photo_ensemble["photo"])[0]
    with running_server(create_app(captioner)) as url:
        health = httpx.get(f"{url}/health", timeout=60).json()
        with photo_ensemble["photo"].open("rb") as f:
            answer = httpx.post(f"{url}/api/caption", files={"image": ("photo.jpg", f, "image/jpeg")}, timeout=60).json()
    assert health["members"] == 2 and health["runtime"] == "litert"
    assert answer["caption"] == expected.caption


def test_the_evaluate_stage_scores_an_ensemble_bundle(tmp_path):
    from captioner.evaluation import run_evaluate
    from captioner.serving.api import Captioner
    from captioner.vision.feature_store import FEATURES_FILE, FeatureReader
    from helpers_model import make_dataset, small_params

    data = make_dataset(tmp_path, n_images=24, dim=8, grid=True, split_sizes=(12, 6, 6))
    members = [member_bundle(tmp_path / f"m{i}", seed=i, voc=data["vocab"]) for i in range(2)]
    assemble(members, tmp_path / "ens", litert=False)
    params = {**small_params(), "evaluate": {"split": "test", "beam_size": 3, "figure_images": 0}}
    result = run_evaluate(params, tmp_path / "ens", tmp_path / "data/features", tmp_path / "data/processed",
                          tmp_path / "data/raw", tmp_path / "metrics", progress=False)
    assert result["members"] == 2 and result["n_images"] == 6
    reader = FeatureReader(tmp_path / "data/features" / FEATURES_FILE)
    rows = [list(reader.names).index(n) for n in data["splits"]["test"]]
    expected = Captioner(load_bundle(tmp_path / "ens"), compiled=False).caption_features(reader[rows], 3)
    predicted = (tmp_path / "metrics/predictions.csv").read_text().splitlines()[1:]
    assert [line.split(",")[1] for line in predicted] == [c.caption for c in expected]
    assemble(members[:1], tmp_path / "flip", litert=False, flip=True)
    with pytest.raises(CaptionerError, match=r"features.h5: no 'flipped' dataset \(extract with features.flip: true\)$"):
        run_evaluate(params, tmp_path / "flip", tmp_path / "data/features", tmp_path / "data/processed",
                     tmp_path / "data/raw", tmp_path / "metrics", progress=False)
