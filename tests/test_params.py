"""params.yaml loading: defaults, and unknown keys, wrong kinds and out-of-range values refused in one line."""

import pytest

from captioner.core.errors import CaptionerError
from captioner.core.params import DEFAULTS, MAX_MEMBERS, SETTINGS, load_params, member_params, useless_settings


def test_shipped_params_are_valid(root):
    params = load_params(root / "params.yaml")
    assert params["data"]["source"] == "sample"
    assert set(params) == set(DEFAULTS)


def test_every_default_passes_its_own_check(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("{}\n")
    params = load_params(path)
    for key, field in SETTINGS.items():
        section, _, sub = key.rpartition(".")
        assert (params[section][sub] if section else params[key]) == field.default


@pytest.mark.parametrize(
    "text, message",
    [
        ("data:\n  sourc: folder\n", r"params.yaml:2: unknown key 'data.sourc'"),
        ("trian:\n  epochs: 3\n", r"params.yaml:1: unknown key 'trian'"),
        ("tokenize:\n  min_count: many\n", r"params.yaml:2: 'tokenize.min_count' must be an integer >= 1, got 'many'"),
        ("data: folder\n", "'data' must be a section"),
        ("data: [\n", "not valid YAML"),
        # out of range or of the wrong kind
        ("train:\n  batch_size: 0\n", r":2: 'train.batch_size' must be an integer >= 1 .*got 0"),
        ("features:\n  batch_size: -4\n", r"'features.batch_size' must be an integer >= 1 .*got -4"),
        ("train:\n  units: -1\n", r"'train.units' must be an integer >= 1"),
        ("train:\n  dropout: 1.0\n", r"'train.dropout' must be a number >= 0 < 1, got 1.0"),
        ("train:\n  dropout: -0.1\n", r"'train.dropout' must be a number"),
        ("tokenize:\n  max_length_percentile: 150\n", r"'tokenize.max_length_percentile' must be .*<= 100, got 150"),
        ("train:\n  learning_rate: .nan\n", r"'train.learning_rate' must be a number"),
        ("train:\n  epochs: 2.5\n", r"'train.epochs' must be an integer"),
        ("train:\n  epochs: true\n", r"'train.epochs' must be an integer"),
        ("train:\n  epochs:\n", r":2: 'train.epochs' is empty; it must be an integer"),
        ("data:\n  source:\n", r"'data.source' is empty; it must be one of sample, folder, archive, kaggle"),
        ("data:\n  path: 5\n", r"'data.path' must be a path or a list of paths or null, got 5"),
        ("data:\n  path: [a.zip, 3]\n", r"'data.path' must be a path or a list of paths"),
        ("features:\n  weights: ''\n", r"'features.weights' must be a string"),
        ("train:\n  decoder: transformer\n", r"'train.decoder' must be one of attention, inject, merge, got 'transformer'"),
        ("features:\n  output: vector\n", r"'features.output' must be one of grid, pooled"),
        ("data:\n  sample_images: 3\n", r"'data.sample_images' must be an integer >= 10"),
        ("evaluate:\n  beam_size: 0\n", r"'evaluate.beam_size' must be an integer >= 1 .*got 0"),
        ("evaluate:\n  split: dev\n", r"'evaluate.split' must be one of test, val, train"),
        ("seed: 7\n", r"params.yaml:1: 'seed' is now 'members', the list of the members' seeds \(seed: 7 is members: "),
        ("members: [-1]\n", r":1: 'members' must be a list of 1 to 16 distinct integers from 0 to 4294967295"),
        ("members: [7, 7]\n", r"'members' must be a list of 1 to 16 distinct integers .*got \[7, 7\]"),
        ("members: []\n", r"'members' must be a list of 1 to 16 distinct integers .*got \[\]"),
        ("members: 7\n", r"'members' must be a list of 1 to 16 distinct integers .*got 7"),
        ("members: [1, true]\n", r"'members' must be a list of 1 to 16 distinct integers .*got \[1, True\]"),
        ("members: [1, 2.0]\n", r"'members' must be a list of 1 to 16 distinct integers"),
        ("members: [4294967296]\n", r"'members' must be a list of 1 to 16 distinct integers from 0 to 4294967295"),
        (f"members: {list(range(17))}\n", r"'members' must be a list of 1 to 16 distinct integers"),
        ("scst:\n  samples: 1\n", r"'scst.samples' must be an integer >= 2"),
        ("train:\n  scst_epochs: 3\n", r"'train.scst_epochs' is now 'scst.epochs'"),
        ("train:\n  litert: false\n", r"'train.litert' is now 'scst.litert'"),
        ("train:\n  max_minutes: 0\n", r"'train.max_minutes' must be a number >= 0.0001"),
    ],
)
def test_bad_params(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(CaptionerError, match=message) as err:
        load_params(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("features:\n  output: pooled\n", r"params.yaml: 'train.decoder': the attention decoder needs features.output: grid"),
        ("features:\n  output: pooled\ntrain:\n  decoder: attention\n", r"params.yaml:4: 'train.decoder'"),
        ("train:\n  batch_size: 4\n  captions_per_image: 5\n", r":3: 'train.captions_per_image': train.captions_per_image must not exceed"),
        ("data:\n  source: folder\n", r"'data.path': data.source folder, archive and karpathy need data.path"),
        ("assemble:\n  flip: true\n", r":2: 'assemble.flip': assemble.flip needs features.flip: true"),
    ],
)
def test_settings_that_do_not_go_together(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(CaptionerError, match=message):
        load_params(path)


def test_partial_section_keeps_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 2\n  dropout: 0\n")
    params = load_params(path)
    assert params["train"]["epochs"] == 2 and params["train"]["dropout"] == 0
    assert params["train"]["units"] == DEFAULTS["train"]["units"]


def test_useless_but_valid_settings_get_a_warning(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 0\n")
    params = load_params(path)
    assert useless_settings(params, "train") == ["train.epochs is 0: the model keeps its random initial weights"]
    assert useless_settings(params, "evaluate") == []
    assert useless_settings(load_params(tmp_path / "params.yaml"), "tokenize") == []


def test_a_member_stage_gets_its_own_seed_and_the_list_is_capped_like_a_bundle(tmp_path):
    from captioner.model.bundle import MAX_MEMBERS as BUNDLE_MEMBERS

    path = tmp_path / "params.yaml"
    path.write_text("members: [42, 7]\n")
    params = load_params(path)
    assert params["members"] == [42, 7] and "seed" not in params
    assert member_params(params, 7) == {**params, "seed": 7}
    with pytest.raises(CaptionerError, match=r"^--seed: 'seed' must be an integer >= 0 .*got -3$"):
        member_params(params, -3)
    assert MAX_MEMBERS == BUNDLE_MEMBERS
