"""The layers' import rules (docs/architecture.md), checked on the source of every module of nbiafs.

Every ``import`` and ``from ... import`` counts, wherever it stands (inside functions, under TYPE_CHECKING).
The layers, each importing only those to its right (``server`` imports no other layer; ``cli`` may import it
and the package's public API too)::

    cli ─> mounting ─> fuse ─┐
                             ├─> fs ─> api ─> settings ─> errors
               fsspec ───────┘

``fsspec`` (the ``nbia://`` filesystem) is built on ``fs`` beside ``fuse``: it never needs FUSE, so it may
not import ``fuse``, ``mounting`` or ``cli``. Third-party packages of optional extras stay in their layer:
only ``fuse`` imports mfusepy, only ``fsspec`` imports fsspec, and no module of nbiafs imports dask.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbiafs"

# layer -> the layers (of nbiafs) it may import; a module may always import its own layer.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "settings": {"errors"},
    "api": {"errors", "settings"},
    "fs": {"errors", "settings", "api"},
    "fuse": {"errors", "settings", "api", "fs"},
    "mounting": {"errors", "settings", "api", "fs", "fuse"},
    # nbiafs.mount(): starts `nbiafs mount -f` in a child process; reads the mount table (fuse, no libfuse).
    "background": {"errors", "settings", "fuse"},
    "fsspec": {"errors", "settings", "api", "fs"},  # nbia:// without FUSE
    "cli": {"errors", "settings", "api", "fs", "fuse", "mounting", "server", "package"},
    "server": set(),
    "package": {"errors", "settings", "api", "background"},  # nbiafs/__init__.py, the public Python API
}
# Third-party packages only some layers may import.
RESTRICTED_PACKAGES: dict[str, set[str]] = {
    "mfusepy": {"fuse"},
    "fsspec": {"fsspec"},
    "dask": set(),
    "distributed": set(),
}


def _layer(module: str) -> str:
    """``nbiafs.api.client`` -> ``api``; ``nbiafs`` (the package itself) -> ``package``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(module: str, imported: set[str]) -> list[str]:
    """The names in ``imported`` that ``module`` may not import, sorted."""
    layer = _layer(module)
    wrong: list[str] = []
    for name in sorted(imported):
        top = name.split(".")[0]
        if top == "nbiafs":
            target = _layer(name)
            is_layer = (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").exists()
            if name != "nbiafs" and target != layer and is_layer and target not in ALLOWED[layer]:
                wrong.append(name)
        elif top in RESTRICTED_PACKAGES and layer not in RESTRICTED_PACKAGES[top]:
            wrong.append(name)
    return wrong


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    module = _module_name(path)
    assert _layer(module) in ALLOWED, f"{module}: outside every known layer (add it to docs/architecture.md)"
    wrong = violations(module, _imports(path))
    assert not wrong, f"{module} (layer {_layer(module)}) imports {wrong}"


def test_every_layer_is_a_folder_or_a_base_module() -> None:
    on_disk = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    on_disk |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert on_disk == set(ALLOWED) - {"package"}


def test_the_checker_finds_violations() -> None:
    assert violations("nbiafs.fs.tree", {"nbiafs.fuse.adapter", "mfusepy", "nbiafs.api.records"}) == [
        "mfusepy",
        "nbiafs.fuse.adapter",
    ]
    assert violations("nbiafs.server.handler", {"nbiafs.errors", "nbiafs.server.auth"}) == ["nbiafs.errors"]
    assert violations("nbiafs.api.client", {"nbiafs.cli.main", "nbiafs.settings"}) == ["nbiafs.cli.main"]
    assert violations("nbiafs.fuse.adapter", {"mfusepy", "nbiafs.fs.tree"}) == []
    assert (
        violations("nbiafs.fsspec.filesystem", {"fsspec.spec", "nbiafs.fs.tree", "nbiafs.api.client"}) == []
    )
    assert violations("nbiafs.fsspec.filesystem", {"nbiafs.fuse.mount", "nbiafs.mounting", "mfusepy"}) == [
        "mfusepy",
        "nbiafs.fuse.mount",
        "nbiafs.mounting",
    ]
    assert violations("nbiafs.fs.tree", {"fsspec", "dask.bag"}) == ["dask.bag", "fsspec"]
