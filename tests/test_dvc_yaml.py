"""dvc.yaml agrees with the code: each stage depends on every captioner module its script imports; member stages
take their seed from their `foreach` item, never from the list itself."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "captioner"


def module_file(module: str) -> Path | None:
    """The file of a dotted `captioner...` module name (a package's __init__.py), or None if there is none."""
    base = ROOT.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _runs_on_import(statement: ast.stmt) -> bool:
    """False for the top-level code no stage runs: `if TYPE_CHECKING:` blocks and a PEP 562 module `__getattr__`
    (captioner/__init__.py's lazy `Captioner`, imported only when a caller asks for that name)."""
    if isinstance(statement, ast.FunctionDef) and statement.name == "__getattr__":
        return False
    return not (isinstance(statement, ast.If) and isinstance(statement.test, ast.Name)
                and statement.test.id == "TYPE_CHECKING")


def imported_modules(path: Path) -> set[str]:
    """Every captioner module that `path` imports anywhere (lazy imports in functions too), with its packages."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    nodes = [node for statement in tree.body if _runs_on_import(statement) for node in ast.walk(statement)]
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}
    return found


def module_closure(script: Path) -> set[str]:
    """Files (relative, POSIX) of every captioner module `script` imports, directly or through other modules."""
    seen: set[str] = set()
    todo = list(imported_modules(script))
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(imported_modules(module_file(module)) - seen)
    return {module_file(m).relative_to(ROOT).as_posix() for m in seen}


def covered(path: str, deps: list[str]) -> bool:
    """Whether `path` is one of `deps` or lies inside a folder dep."""
    return any(PurePosixPath(path) == PurePosixPath(d) or PurePosixPath(d) in PurePosixPath(path).parents for d in deps)


def stages() -> dict:
    """dvc.yaml's stage definitions by name; a `foreach` stage's is its `do:` template (with `${item}` unresolved)."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in raw.items()}


def entries(items: list) -> list[str]:
    """Paths of a deps/outs list (an out may be a one-key mapping with options)."""
    return [next(iter(item)) if isinstance(item, dict) else item for item in items]


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_every_imported_module(name):
    stage = stages()[name]
    deps = entries(stage["deps"])
    script = shlex.split(stage["cmd"])[1]
    assert script in deps
    needed = module_closure(ROOT / script)
    assert needed, f"{script} imports no captioner module?"
    missing = sorted(m for m in needed if not covered(m, deps))
    assert not missing, f"dvc.yaml stage {name} lacks deps {missing}"
    code_deps = [d for d in deps if d.startswith(f"{PACKAGE}/")]
    unused = [d for d in code_deps if not any(covered(m, [d]) for m in needed)]
    assert not unused, f"dvc.yaml stage {name} depends on {unused} that {script} never imports"


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_path_in_a_command_is_a_dep_or_out(name):
    stage = stages()[name]
    paths = entries(stage["deps"]) + entries(stage.get("outs", [])) + entries(stage.get("metrics", []))
    args = shlex.split(stage["cmd"])
    assert args[0] == "python"
    for option, value in zip(args[2::2], args[3::2]):
        assert option.startswith("--"), stage["cmd"]
        if option == "--params":
            assert value == "params.yaml"
            continue
        if option == "--seed":
            assert value == "${item}", f"dvc.yaml stage {name}: --seed comes from the foreach item"
            continue
        related = [p for p in paths if covered(p, [value]) or covered(value, [p])]
        assert related, f"dvc.yaml stage {name}: {option} {value} is neither a dep nor an out"


def test_member_stages_run_once_per_member_seed_and_never_read_the_list():
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    members = [name for name, stage in raw.items() if "foreach" in stage]
    assert sorted(members) == ["finetune", "train"]
    for name in members:
        assert raw[name]["foreach"] == "${members}"
        template = yaml.safe_dump(raw[name]["do"])
        assert "--seed ${item}" in raw[name]["do"]["cmd"] and "members" not in raw[name]["do"].get("params", [])
        assert "${members" not in template, f"{name}@SEED reads the list: adding a member would re-run it"
    assert "members" in raw["assemble"]["params"]


def test_closure_follows_lazy_and_package_imports():
    needed = module_closure(ROOT / "stages" / "clean_text.py")
    assert "captioner/data/datasets/raw.py" in needed and "captioner/data/datasets/__init__.py" in needed
    assert "captioner/__init__.py" in needed
    assert "captioner/model/decoders.py" in module_closure(ROOT / "stages" / "evaluate.py")


def test_architecture_names_every_module_and_stage():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name = path.relative_to(ROOT / PACKAGE).as_posix()
        assert f"`{name}`" in text, f"ARCHITECTURE.md does not describe {name}"
    for name, stage in stages().items():
        assert f"`{name}" in text and shlex.split(stage["cmd"])[1] in text
