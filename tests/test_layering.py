"""Layering of core/: every module sits in a package, and imports point down only.

A module of package P may import P itself and the packages before P in LAYERS (lowest first), never one after it,
and core never imports the app, training, benchmarks or tests. Module-level and function-level imports both count.
"""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"

LAYERS = [  # lowest first
    "security",   # who may sign in and who is admin; the audit trail
    "data",       # classes, dataset readers, splits, patient context, acquisition sources
    "imaging",    # pixel preprocessing, image <-> tensor, test-time-augmentation views
    "models",     # the networks, the MB-DCNN data flow between them, losses, float precision
    "decisions",  # logits -> probabilities, referral, triage, uncertainty, conformal sets, OOD and quality checks
    "io",         # weight files, image intake, DICOM in and out, the PACS client
    "lesion",     # lesion measurements, skin tone, mask encoding, similar confirmed cases
    "analysis",   # the Analyzer, CAMs, follow-up, predict CLI, folder evaluation, metrics
    "reports",    # the PDF report and the follow-up comparison PDF
    "batch",      # archive-scale batch analysis: engine, shards, results
]
FORBIDDEN = {"ui", "app_pages", "train", "bench", "tests", "streamlit_app"}  # the app, training, benchmarks, tests
MODULE_LEVEL_FORBIDDEN = {"streamlit"}  # only lazily, inside a function (core.io.pacs reads st.secrets when asked)


def imports(path: Path):
    """(lineno, dotted name, inside a function) for each import of `path`; relative imports resolved."""
    package = list(path.relative_to(CORE.parent).with_suffix("").parts[:-1])

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name, inner
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                for alias in child.names:  # `from core import x`: x is the package imported
                    yield child.lineno, f"{module}.{alias.name}" if module == "core" else module, inner
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(), filename=str(path)), False)


def modules():
    return sorted(CORE.rglob("*.py"))


def name(path: Path) -> str:
    return path.relative_to(CORE.parent).as_posix()


def test_every_package_is_in_the_layer_order():
    packages = sorted(p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert sorted(LAYERS) == packages, f"core packages {packages} != LAYERS {sorted(LAYERS)}"


def test_no_module_directly_in_core():
    loose = [name(p) for p in CORE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly in core/ (move each into the package of its concept): {loose}"


def test_core_never_imports_the_app_training_benchmarks_or_tests():
    found = []
    for path in modules():
        for lineno, imported, in_function in imports(path):
            top = imported.split(".")[0]
            if top in FORBIDDEN:
                found.append(f"{name(path)}:{lineno} imports {imported}")
            elif top in MODULE_LEVEL_FORBIDDEN and not in_function:
                found.append(f"{name(path)}:{lineno} imports {imported} at module level")
    assert not found, "core imports what it must not:\n" + "\n".join(found)


def test_imports_point_down_only():
    found = []
    for path in modules():
        parts = path.relative_to(CORE).parts
        if len(parts) < 2:
            continue  # core/__init__.py (and loose modules, reported above)
        own = parts[0]
        for lineno, imported, _ in imports(path):
            dotted = imported.split(".")
            if dotted[0] != "core" or len(dotted) < 2 or dotted[1] == own:
                continue
            if dotted[1] not in LAYERS:
                found.append(f"{name(path)}:{lineno} imports {imported}: core.{dotted[1]} is not in LAYERS")
            elif own in LAYERS and LAYERS.index(dotted[1]) > LAYERS.index(own):
                found.append(f"{name(path)}:{lineno} imports {imported}: core.{dotted[1]} is above core.{own}")
    assert not found, "imports that point up the layer order:\n" + "\n".join(found)


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """core module -> the core modules it imports (module- or function-level; `from package import module` counts as
    the module)."""
    known = {module_name(p) for p in modules()}
    graph = {}
    for path in modules():
        edges = set()
        for _, imported, _ in imports(path):
            target = imported if imported in known else ".".join(imported.split(".")[:-1])
            if target in known and target != module_name(path) and target != "core":
                edges.add(target)
        graph[module_name(path)] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None (depth-first search, grey / black marking)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_among_core_modules():
    """A module that imports another which (even lazily, inside a function) imports it back is one concept split in
    two; put what both need in a third module below them (e.g. core.io.image_limits)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
