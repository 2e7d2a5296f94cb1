"""Import direction: hardware, config and deployment never import the code that computes."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medvllm"
FORBIDDEN = ("medvllm.engine", "medvllm.models", "medvllm.layers", "medvllm.quantization")
CHECKED = [PACKAGE / "hardware.py", PACKAGE / "config.py", *sorted((PACKAGE / "deployment").glob("*.py"))]


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_never_imports_engine_models_layers_or_quantization(path):
    bad = sorted(n for n in imported(path) if n.startswith(FORBIDDEN) or n in ("medvllm.llm",))
    assert bad == [], f"{path.name} imports {', '.join(bad)}"
