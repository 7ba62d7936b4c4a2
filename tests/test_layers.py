"""The package's layers import only downward: config, files, progress bars and backbones at the bottom; flow, losses and
data above them; the engine above those; diagnostics, the demos and the CLI on top."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "timematters"
LAYERS = {
    "config": 0,
    "progress": 0,
    "files": 0,
    "backbones": 0,
    "flow": 1,
    "losses": 1,
    "data": 1,
    "engine": 2,
    "diagnostics": 3,
    "demo": 3,
    "image_demo": 3,
    "cli": 3,
    "__main__": 3,
}
# Within a layer, these may not import each other either (data is not built on the losses).
FORBIDDEN = {("data", "losses"), ("flow", "losses"), ("flow", "data")}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    """The top-level parts of timematters a file imports, at module level or inside functions."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("timematters."):
                parts.add(name.split(".")[1])
            elif name == "timematters" and isinstance(node, ast.ImportFrom):
                # `from timematters import x`: a part when x is one (not __version__, say).
                parts.update(alias.name for alias in node.names if alias.name in LAYERS)
    return parts


def test_every_part_of_the_package_has_a_layer():
    assert {_part(p) for p in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_go_downward(path):
    here = _part(path)
    for other in _imported_parts(path) - {here}:
        assert other in LAYERS, f"{path.name} imports unknown part {other}"
        assert LAYERS[other] <= LAYERS[here], f"{here} (layer {LAYERS[here]}) imports {other}"
        assert (here, other) not in FORBIDDEN, f"{here} must not import {other}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "engine").glob("*.py")), ids=lambda p: p.name)
def test_engine_functions_take_at_most_eight_parameters(path):
    # The engine passes one Run or one settings object rather than long positional lists.
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            names = [n for n in names if n not in ("self", "cls")]
            assert len(names) <= 8, f"{path.name}:{node.lineno} {node.name} takes {len(names)}"
