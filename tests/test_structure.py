"""The shape of the code (shared/DESIGN.md): imports point down only, no circles, small files and
functions, a thin `Pipeline` and `create_app`, and tests that use the public names only.

Read from the source with `ast`, so every import counts, the lazy ones inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "noisecraft"
TESTS = Path(__file__).parent

# Each module's floor (the longest matching prefix decides); a module may import from its own floor
# (without circles) and from the floors below, never from above.
FLOORS = {
    "noisecraft.version": 0, "noisecraft.errors": 0, "noisecraft.files": 0,
    "noisecraft.devices": 1, "noisecraft.images": 1, "noisecraft.pngmeta": 1, "noisecraft.presets": 1,
    "noisecraft.schedules": 2, "noisecraft.samplers": 2, "noisecraft.denoiser": 2, "noisecraft.latents": 2,
    "noisecraft.models": 2, "noisecraft.text": 2, "noisecraft.control": 2,
    "noisecraft.checkpoints": 3,
    "noisecraft.settings": 4, "noisecraft.pipeline": 4,
    "noisecraft.train": 5, "noisecraft.datasets": 5, "noisecraft.upscale": 5, "noisecraft.studio": 5,
    "noisecraft.gallery": 5, "noisecraft.brand": 5, "noisecraft.layouts": 5, "noisecraft.provenance": 5,
    "noisecraft.campaign": 6,
    "noisecraft.eval": 6,
    "noisecraft.cli": 7, "noisecraft.server": 7,
    "noisecraft": 8,  # the package itself: its __init__ is the top
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SRC.rglob("*.py")}


def floor(module: str) -> int:
    key = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len)
    return FLOORS[key]


def imports(module: str) -> set[str]:
    """The noisecraft modules `module` imports, anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "noisecraft"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("noisecraft"):
                continue
            for alias in node.names:  # `from . import settings` imports a module; `from .x import y` imports x
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    found.discard(module)
    return {name if name in MODULES else name.rpartition(".")[0] for name in found}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_has_a_floor():
    assert all(floor(m) >= 0 for m in MODULES)


def test_imports_point_down_only():
    upward = sorted(f"{m} ({floor(m)}) imports {t} ({floor(t)})" for m, targets in GRAPH.items() for t in targets
                    if floor(t) > floor(m))
    assert upward == []


def test_no_import_circles():
    state: dict[str, int] = {}  # 1 visiting, 2 done
    circles = []

    def visit(module, trail):
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_graph_sees_real_edges():
    """A check of the checker: imports it must see, lazy ones included."""
    assert "noisecraft.pipeline" in GRAPH["noisecraft.cli.generate"]  # inside cmd_generate
    assert "noisecraft.settings" in GRAPH["noisecraft.pipeline"]  # `from . import settings as ...`
    assert "noisecraft.checkpoints.io" in GRAPH["noisecraft.checkpoints.sd"]


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_files_are_at_most_400_lines():
    long = {str(p.relative_to(SRC)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_function_takes_more_than_10_parameters():
    wide = []
    for path in MODULES.values():
        for fn in _functions(ast.parse(path.read_text())):
            a = fn.args
            names = [x.arg for x in a.posonlyargs + a.args]
            count = len(names) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg) - (names[:1] in (["self"], ["cls"]))
            if count > 10:
                wide.append(f"{path.relative_to(SRC)}:{fn.name} ({count})")
    assert wide == []


@pytest.mark.parametrize("file, kind, name, most", [("pipeline.py", ast.ClassDef, "Pipeline", 200),
                                                    ("server/app.py", ast.FunctionDef, "create_app", 80)])
def test_the_thin_parts_stay_thin(file, kind, name, most):
    node = next(n for n in ast.walk(ast.parse((SRC / file).read_text())) if isinstance(n, kind) and n.name == name)
    assert node.end_lineno - node.lineno + 1 <= most


def test_tests_use_public_names_only():
    private = []
    for path in TESTS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("noisecraft"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                private += [f"{path.name}: {node.module}" for part in node.module.split(".") if part.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                while isinstance(base, ast.Attribute):
                    base = base.value
                if isinstance(base, ast.Name) and base.id in ("noisecraft", "devices", "samplers", "schedules", "S",
                                                               "keymaps", "sdfiles", "sd_config", "tj", "emoji"):
                    private.append(f"{path.name}: {ast.unparse(node)}")
    assert private == []
