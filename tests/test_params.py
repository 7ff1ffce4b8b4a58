"""params.yaml loading: defaults, unknown keys and wrong types are refused in one line."""

import pytest

from captioner.errors import CaptionerError
from captioner.params import DEFAULTS, load_params


def test_shipped_params_are_valid(root):
    params = load_params(root / "params.yaml")
    assert params["data"]["source"] == "sample"
    assert set(params) == set(DEFAULTS)


@pytest.mark.parametrize(
    "text, message",
    [
        ("data:\n  sourc: folder\n", "unknown key 'data.sourc'"),
        ("trian:\n  epochs: 3\n", "unknown key 'trian'"),
        ("tokenize:\n  min_count: many\n", "'tokenize.min_count' must be int"),
        ("data: folder\n", "'data' must be a section"),
        ("data: [\n", "not valid YAML"),
    ],
)
def test_bad_params(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(CaptionerError, match=message):
        load_params(path)


def test_partial_section_keeps_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 2\n")
    params = load_params(path)
    assert params["train"]["epochs"] == 2
    assert params["train"]["units"] == DEFAULTS["train"]["units"]
