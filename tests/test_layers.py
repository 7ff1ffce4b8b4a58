"""The package's folders are its layers: every import of a captioner module points down, never up."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dvc_yaml import PACKAGE, ROOT, imported_modules

# Lowest first. A module may import from its own folder and from the folders listed before it; the
# modules at the top (captioner/*.py: the CLI, the evaluate stage, the package) may import from any.
LAYERS = ["core", "data", "vision", "model", "serving"]
ALLOWED = {layer: set(LAYERS[: LAYERS.index(layer) + 1]) for layer in LAYERS}
ALLOWED["data"].discard("vision")
ALLOWED["vision"].discard("data")


def layer_of(module: str) -> str | None:
    """The folder of a dotted `captioner.<folder>...` module, None for a top-level module or the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def modules() -> list[Path]:
    return sorted(p for p in (ROOT / PACKAGE).rglob("*.py") if p.parent != ROOT / PACKAGE)


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(ROOT / PACKAGE).as_posix())
def test_imports_point_down(path):
    own = path.relative_to(ROOT / PACKAGE).parts[0]
    for module in sorted(imported_modules(path)):
        if module == PACKAGE:
            continue
        target = layer_of(module)
        assert target is not None, f"{path.relative_to(ROOT)} imports {module}, above its own folder"
        assert target in ALLOWED[own], f"{path.relative_to(ROOT)} ({own}) imports {module} ({target}): up or sideways"


def test_top_level_keeps_a_handful_of_modules():
    top = sorted(p.name for p in (ROOT / PACKAGE).glob("*.py"))
    assert top == ["__init__.py", "cli.py", "evaluation.py"], top
    assert sorted(p.name for p in (ROOT / PACKAGE).iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)
