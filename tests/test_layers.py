"""The layering the README promises, read from the source: which package may import which.

``blender_equi360/`` imports neither bpy nor torch; ``operators/`` (bpy) and ``engine/`` (torch) never import each
other; inside the core each layer imports only the layers below it, and ``jobs/`` only the standard library.
"""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE_LAYERS = ["jobs", "geometry", "media", "stages", "quality", "farm"]  # each may import those before it
ML = {"torch", "diffusers", "transformers", "peft", "safetensors", "accelerate", "huggingface_hub"}


def imports(path: Path, source: str | None = None) -> set[str]:
    """Absolute dotted names a file imports, anywhere in it (lazy imports inside functions count too)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # "from . import x" names a module
    return names


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


def core_layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "blender_equi360" and len(parts) > 1 and parts[1] in CORE_LAYERS else None


def test_the_packages_are_where_the_rules_expect():
    for layer in CORE_LAYERS:
        assert files(f"blender_equi360/{layer}"), layer
    assert files("operators") and files("engine")


@pytest.mark.parametrize("path", files("blender_equi360"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_neither_blender_nor_the_engine(path):
    wrong = {n for n in imports(path) if top(n) in {"bpy", "operators", "engine"} | ML}
    assert not wrong, f"{path.name} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", files("operators"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_add_on_never_imports_the_engine_or_torch(path):
    wrong = {n for n in imports(path) if top(n) in {"engine"} | ML}
    assert not wrong, f"{path.name} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", files("engine"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_never_imports_blender_or_the_add_on(path):
    wrong = {n for n in imports(path) if top(n) in {"bpy", "operators"}}
    assert not wrong, f"{path.name} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", [p for layer in CORE_LAYERS for p in files(f"blender_equi360/{layer}")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_each_core_layer_imports_only_the_layers_below(path):
    layer = path.relative_to(ROOT / "blender_equi360").parts[0]
    allowed = CORE_LAYERS[: CORE_LAYERS.index(layer) + 1]
    own = imports(path)
    upward = {n for n in own if top(n) == "blender_equi360" and core_layer(n) not in allowed}
    assert not upward, f"{layer}/{path.name} imports {sorted(upward)}, above its layer"
    if layer == "jobs":  # the contract: readable by any Python, Blender's or the engine's, with nothing installed
        outside = {n for n in own if top(n) not in sys.stdlib_module_names and top(n) != "blender_equi360"}
        assert not outside, f"jobs/{path.name} imports {sorted(outside)}: the contract is standard library only"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_core_has_no_import_cycles():
    modules = {module_name(p): p for p in files("blender_equi360")}
    graph = {m: {n for n in imports(p) if n in modules and n != m} for m, p in modules.items()}
    state: dict[str, str] = {}

    def visit(m, trail):
        if state.get(m) == "open":
            raise AssertionError("import cycle: " + " → ".join(trail[trail.index(m):] + [m]))
        if m not in state:
            state[m] = "open"
            for n in sorted(graph[m]):
                visit(n, trail + [m])
            state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


ENGINE_ONLY = {"numba", "llvmlite"}  # in the engine's packages, not in the add-on's wheels


def core_modules_the_add_on_loads() -> dict[str, Path]:
    """Every core module the add-on's code can import, directly or through other core modules."""
    modules = {module_name(p): p for p in files("blender_equi360")}

    def core_names(path):
        names = {n.removeprefix("operators.") for n in imports(path)}
        return {n for n in names if n in modules}
    reached, todo = {}, set().union(*(core_names(p) for p in files("operators")))
    while todo:
        name = todo.pop()
        if name not in reached:
            reached[name] = modules[name]
            todo |= core_names(modules[name])
    return reached


def test_the_add_on_never_loads_the_engine_only_packages():
    reached = core_modules_the_add_on_loads()
    assert "blender_equi360.stages.reference" in reached  # the walk follows the add-on's imports
    wrong = {name: sorted(n for n in imports(path) if top(n) in ENGINE_ONLY) for name, path in reached.items()}
    assert not {k: v for k, v in wrong.items() if v}, "the add-on would import numba through these"


def test_a_broken_rule_is_seen():
    """The checker itself: an upward relative import that climbs, and a third-party one, are both found."""
    probe = ROOT / "blender_equi360" / "jobs" / "probe.py"
    assert {"blender_equi360.quality", "blender_equi360.quality.score", "numpy"} <= imports(
        probe, "from ..quality import score\nimport numpy\n")
