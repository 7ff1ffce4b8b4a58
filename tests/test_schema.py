"""The declarative value checks behind params.yaml and the model bundle."""

import pytest

from captioner.core.errors import CaptionerError
from captioner.core.schema import Field, check, choice, integer, number, paths, text


@pytest.mark.parametrize(
    "field, good, bad",
    [
        (integer(1, 1, 8), [1, 8], [0, 9, 2.0, True, "3"]),
        (number(0.5, 0, below=1), [0, 0.5, 0.999], [1, -0.1, float("nan"), float("inf"), "0.5", False]),
        (choice("a", "a", "b"), ["a", "b"], ["c", "", 1, None]),
        (text("x"), ["x", "a path"], ["", "  ", 3, [], None]),
        (text(None, nullable=True), [None, "x"], [""]),
        (paths(None), [None, "a.zip", ["a.zip", "b.zip"]], [[], 5, ["a", 5], [""]]),
        (Field("bool", True), [True, False], [1, 0, "yes"]),
        (Field("list"), [[], [1, 2]], ["12", 12, None]),
        (Field("int", "auto", low=1, choices=("auto",)), ["auto", 1, 4], ["all", 0, 1.5]),
    ],
)
def test_check_accepts_and_refuses(field, good, bad):
    for value in good:
        assert check("f.yaml:3", "k", value, field) == value
    for value in bad:
        with pytest.raises(CaptionerError, match=r"^f.yaml:3: 'k' (must be|is empty)"):
            check("f.yaml:3", "k", value, field)


def test_descriptions_read_as_english():
    assert integer(1, 1, 8).describe() == "an integer >= 1 <= 8"
    assert number(0.5, 0, below=1).describe() == "a number >= 0 < 1"
    assert choice("a", "a", "b").describe() == "one of a, b"
    assert paths(None).describe() == "a path or a list of paths or null"
    assert Field("int", "auto", low=1, choices=("auto",)).describe() == "an integer >= 1 or auto"
