"""The package's layers import downward only, and the lower ones know nothing of Lightning.

Imports are read with `ast` from the source, function-level ones included, so a lazy import
that goes upward fails here as well as one at the top of a file."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Lowest first: a module may import its own layer and the layers before it, never one after.
LAYERS = ("errors", "host", "data", "models", "generation", "training", "studies", "serve",
          "export", "tools")
# Third-party packages a layer may not import: a model and generation need plain torch only,
# and only the serve layer knows the web.
WEB = ("starlette", "uvicorn", "fastapi")
FORBIDDEN = {"data": WEB, "training": WEB, "studies": WEB, "export": WEB,
             "models": ("lightning", "pytorch_lightning", "hydra", *WEB),
             "generation": ("lightning", "pytorch_lightning", "hydra", *WEB)}


def layer_of(module: str) -> str:
    """`charrnn.data.vocab` -> data; the root's errors.py and host.py -> errors, host; everything
    else at the root (cli.py, bench/, gpu_checks.py, the old `python -m` paths) and the entry
    points -> tools."""
    parts = module.split(".")
    if parts[0] == "charrnn" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "tools"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = [*package[: len(package) - node.level + 1], *[node.module or ""]] \
                if node.level else (node.module or "").split(".")
            base = ".".join(p for p in parts if p)
            # `from charrnn.studies import search` imports the module charrnn.studies.search
            packages = ("charrnn", *(f"charrnn.{layer}" for layer in LAYERS))
            found += [(node.lineno, f"{base}.{alias.name}" if base in packages else base)
                      for alias in node.names]
    return found


def violations(root: Path) -> list[str]:
    """Every import in `root`'s charrnn/, hydra_plugins/ and entry points that goes upward or
    reaches a package its layer may not use, as 'file:line: what'."""
    files = [*sorted((root / "charrnn").rglob("*.py")),
             *sorted((root / "hydra_plugins").rglob("*.py")),
             root / "train.py", root / "generate.py"]
    found = []
    for path in files:
        module = module_name(path, root)
        layer = layer_of(module)
        for line, imported in imports(path, module):
            where = f"{path.relative_to(root)}:{line}"
            top = imported.split(".")[0]
            if top == "charrnn":
                target = layer_of(imported)
                if LAYERS.index(target) > LAYERS.index(layer):
                    found.append(f"{where}: {layer} imports {imported} ({target} is above it)")
            elif top in FORBIDDEN.get(layer, ()):
                found.append(f"{where}: {layer} imports {top}")
    return found


def test_every_layer_imports_downward_only():
    assert violations(ROOT) == []


def test_each_layer_says_what_it_may_import():
    for layer in LAYERS[1:-1]:
        path = ROOT / "charrnn" / layer
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")  # host.py
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and "May import" in doc, layer


@pytest.mark.parametrize(("source", "says"), [
    ("from charrnn.training.run import train\n", "data imports charrnn.training.run"),
    ("def f():\n    from charrnn.studies import search\n", "data imports charrnn.studies.search"),
    ("import charrnn.generation.sampling\n", "data imports charrnn.generation.sampling"),
])
def test_an_upward_import_is_found(tmp_path, source, says):
    """The check itself: an upward import written into a copy of the data layer fails it."""
    (tmp_path / "charrnn" / "data").mkdir(parents=True)
    (tmp_path / "charrnn" / "data" / "bad.py").write_text(source)
    (tmp_path / "hydra_plugins").mkdir()
    for script in ("train.py", "generate.py"):
        (tmp_path / script).write_text("from charrnn.training.run import train\n")
    [found] = violations(tmp_path)
    assert found.startswith("charrnn/data/bad.py:") and says in found


def test_lightning_in_a_model_is_found(tmp_path):
    (tmp_path / "charrnn" / "models").mkdir(parents=True)
    (tmp_path / "charrnn" / "models" / "bad.py").write_text("import lightning as L\n")
    (tmp_path / "hydra_plugins").mkdir()
    for script in ("train.py", "generate.py"):
        (tmp_path / script).write_text("")
    assert violations(tmp_path) == ["charrnn/models/bad.py:1: models imports lightning"]


@pytest.mark.parametrize("name", ["report", "diagnostics", "speakers"])
def test_the_former_module_paths_still_run(name, monkeypatch, capsys):
    """`python -m charrnn.report` (and the other two) run charrnn.studies.<name>, naming it."""
    import runpy

    monkeypatch.setattr("sys.argv", [f"charrnn.{name}", "--help"])
    monkeypatch.delitem(sys.modules, f"charrnn.{name}", raising=False)  # as in a new process
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(f"charrnn.{name}", run_name="__main__")
    out = capsys.readouterr()
    assert exit_.value.code == 0 and "usage:" in out.out
    assert f"python -m charrnn.studies.{name}" in out.err
