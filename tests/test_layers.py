"""The layers import only downwards: data and model never import train or predict; predict never imports train."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sam2_video"
FORBIDDEN = {"data": ("train", "predict"), "model": ("train", "predict"), "predict": ("train",)}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    wrong = [f"{path.relative_to(PACKAGE)} imports {name}"
             for path in files for name in sorted(imported_modules(path))
             if any(name == f"sam2_video.{above}" or name.startswith(f"sam2_video.{above}.")
                    for above in FORBIDDEN[layer])]
    assert not wrong, "\n".join(wrong)
