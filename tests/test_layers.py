"""The architecture as a test: every module imports on its own, and no layer reaches up.

Layers, lowest first: core (errors, files, artifacts, typed_yaml, config, compat) -> data -> models
-> ot, objectives -> engine -> eval -> train -> launch -> compare -> the main job and the CLI. A
module may import from its own layer and the ones below; ot/ and objectives/ (the math) never touch
torch.distributed or DeepSpeed.
"""

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from dist_optical.config import REPO_ROOT, OTGrad
from dist_optical.ot.sinkhorn import GRAD_MODES

PACKAGE = REPO_ROOT / "dist_optical"
LAYERS = [
    {"errors", "files", "artifacts", "typed_yaml", "config", "compat"},
    {"data"},
    {"models"},
    {"ot", "objectives"},
    {"engine"},
    {"eval"},
    {"train"},
    {"launch"},
    {"compare"},
    {"pipeline", "cli", "__main__", "__init__"},
]
MATH = {"ot", "objectives"}


def modules() -> list[str]:
    return sorted(
        ".".join(("dist_optical", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    )


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def source(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def top_level_imports(path: Path) -> set[str]:
    """The dist_optical modules a file imports when it is itself imported (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names
            )  # a submodule imported by name
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level])
            found.add(f"{base}.{node.module}" if node.module else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: resolve against the package
            base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
            found.add(".".join((*base, node.module or "")).rstrip("."))
    return found


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    proc = subprocess.run([sys.executable, "-c", code, *modules()], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_module_level_imports_have_no_cycle():
    """Static, so it does not depend on which module happens to be imported first."""
    known = set(modules())
    graph = {module: top_level_imports(source(module)) & known for module in known}
    done: set[str] = set()

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        """The first import cycle reachable from ``module`` along ``path``, or None."""
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for name in sorted(graph[module]):
            if (cycle := cycle_from(name, [*path, module])) is not None:
                return cycle
        done.add(module)
        return None

    cycles = [cycle for module in sorted(graph) if (cycle := cycle_from(module, [])) is not None]
    assert not cycles, "import cycle: " + " -> ".join(cycles[0])


@pytest.mark.parametrize("module", modules())
def test_no_layer_imports_from_a_layer_above(module):
    path = source(module)
    upward = [
        name
        for name in imports(path)
        if name.startswith("dist_optical.") and layer_of(name) > layer_of(module)
    ]
    assert not upward, f"{module} (layer {layer_of(module)}) imports {upward}"
    if module.split(".")[1:2] and module.split(".")[1] in MATH:
        distributed = [name for name in imports(path) if name.startswith(("torch.distributed", "deepspeed"))]
        assert not distributed, f"{module} is math and imports {distributed}"


def test_the_config_choices_match_the_solver():
    assert typing.get_args(OTGrad) == GRAD_MODES  # config.py may not import ot/, so they are kept equal here
