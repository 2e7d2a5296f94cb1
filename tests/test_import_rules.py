"""The layout's rules (docs/ARCHITECTURE.md, "Rules"), checked on the source: which part of the package may
import which, and that no code sets attributes on a layer or model it does not own."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medvllm"

COMPUTE = ("engine", "models", "layers", "quantization", "backends", "distributed")
FRONT = ("llm", "server", "cli", "quality")
# part of the package -> the parts it must never import
RULES = {
    "hardware": COMPUTE + FRONT + ("deployment",),
    "config": COMPUTE + FRONT + ("deployment",),
    "deployment": COMPUTE + FRONT,
    "loader": COMPUTE + FRONT + ("deployment",),
    "layers": ("engine", "models", "quantization", "backends", "deployment") + FRONT,
    "models": ("engine", "quantization", "backends", "deployment") + FRONT,
    "quantization": ("engine", "models", "deployment") + FRONT,
    "backends": ("engine", "models", "distributed", "deployment") + FRONT,
    "engine": ("deployment",) + FRONT,
    "distributed": ("deployment",) + FRONT,
    "structured": COMPUTE + FRONT + ("deployment",),
}
# the one place the engine reaches into distributed: its executor factory
ALLOWED = {("engine/executor.py", "distributed")}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    """The package parts a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name.split(".")[1] for name in names if name.startswith("medvllm.") and name.count(".") >= 1}


FILES = [path for path in sorted(PACKAGE.rglob("*.py")) if part_of(path) in RULES]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_follow_the_layout(path):
    rel = path.relative_to(PACKAGE).as_posix()
    forbidden = set(RULES[part_of(path)])
    bad = sorted(part for part in imported_parts(path) & forbidden if (rel, part) not in ALLOWED)
    assert bad == [], f"{rel} imports medvllm.{', medvllm.'.join(bad)}: see docs/ARCHITECTURE.md, Rules"


def _module_attributes() -> set[str]:
    """Every attribute a layer or model class sets on itself."""
    names = set()
    for path in [*(PACKAGE / "layers").rglob("*.py"), *(PACKAGE / "models").rglob("*.py")]:
        for cls in (n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    names.add(node.attr)
    return names


# bitsandbytes' own Linear is handed its quantized parameter: an object of that library, not ours
NOT_OURS = {("quantization/bnb.py", "weight")}


def test_no_code_sets_attributes_on_a_layer_it_does_not_own():
    """Backends and methods are handed to layers at construction; a built model is never patched."""
    attributes = _module_attributes()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if node.attr in attributes and (rel, node.attr) not in NOT_OURS:
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    assert found == [], "set from outside the layer: " + "; ".join(found)
