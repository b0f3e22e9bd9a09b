"""Layering: every module of core/ sits in a package, and imports point down only; no import circle anywhere.

A module of package P may import P itself and the packages before P in LAYERS (lowest first), never one after it.
Outside core the direction is one way too: calibration may import train (the stages, the cached forward passes), train
never imports calibration, core imports neither, and none of them imports the app, benchmarks or tests. Module-level and
function-level imports both count.
"""
from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"

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
APP_AND_TOOLS = {"ui", "app_pages", "streamlit_app", "bench", "tests"}  # the app, benchmarks, tests
FORBIDDEN = APP_AND_TOOLS | {"train", "calibration"}  # core: what no module of it imports
NOT_IMPORTED = {  # package -> the top-level packages its modules never import
    "core": FORBIDDEN,
    "train": APP_AND_TOOLS | {"calibration"},  # calibration fits rules on what training made, never the reverse
    "calibration": APP_AND_TOOLS,
}
MODULE_LEVEL_FORBIDDEN = {"streamlit"}  # only lazily, inside a function (core.io.pacs reads st.secrets when asked)


def imports(path: Path, root: Path = ROOT) -> tuple[tuple[int, str, bool], ...]:
    """(lineno, dotted name, inside a function) for each import of `path`; relative imports resolved. For
    `from a.b import c` the name is a.b.c (c may be a module or a name defined in a.b)."""
    return parsed_imports(path, root)


@functools.cache  # every test reads the same files: parse each once
def parsed_imports(path: Path, root: Path) -> tuple[tuple[int, str, bool], ...]:
    package = list(path.relative_to(root).with_suffix("").parts[:-1])

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
                for alias in child.names:
                    yield child.lineno, f"{module}.{alias.name}" if module else alias.name, inner
            yield from walk(child, inner)

    return tuple(walk(ast.parse(path.read_text(), filename=str(path)), False))


def modules(package: Path = CORE):
    return sorted(package.rglob("*.py"))


def name(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


def test_every_package_is_in_the_layer_order():
    packages = sorted(p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert sorted(LAYERS) == packages, f"core packages {packages} != LAYERS {sorted(LAYERS)}"


def test_no_module_directly_in_core():
    loose = [name(p) for p in CORE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly in core/ (move each into the package of its concept): {loose}"


def forbidden_imports(package: str, root: Path = ROOT) -> list[str]:
    """Each import of a module of root/package that NOT_IMPORTED[package] rules out, as "file:line imports name"."""
    found = []
    for path in modules(root / package):
        for lineno, imported, in_function in imports(path, root):
            top = imported.split(".")[0]
            if top in NOT_IMPORTED[package]:
                found.append(f"{name(path, root)}:{lineno} imports {imported}")
            elif package == "core" and top in MODULE_LEVEL_FORBIDDEN and not in_function:
                found.append(f"{name(path, root)}:{lineno} imports {imported} at module level")
    return found


def test_core_never_imports_the_app_training_calibration_benchmarks_or_tests():
    found = forbidden_imports("core")
    assert not found, "core imports what it must not:\n" + "\n".join(found)


def test_training_never_imports_calibration_and_neither_imports_the_app():
    found = forbidden_imports("train") + forbidden_imports("calibration")
    assert not found, "train or calibration imports what it must not:\n" + "\n".join(found)


@pytest.mark.parametrize("package", ["train", "calibration"])
def test_every_training_and_calibration_module_imports(package):
    """Each command of train/ and calibration/ is run alone (python -m ...), where nothing else has imported what it
    names: every module must import on its own."""
    for path in modules(ROOT / package):
        importlib.import_module(module_name(path))


def test_the_direction_check_finds_train_importing_calibration(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loop.py").write_text("import numpy\n\n\ndef f():\n    from calibration import evaluate\n")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "fit.py").write_text("from train.stages import STAGES\n")
    assert forbidden_imports("train", tmp_path) == ["train/loop.py:5 imports calibration.evaluate"]
    assert forbidden_imports("calibration", tmp_path) == []


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


CHECKED_FOR_CIRCLES = ("core", "train", "calibration")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module of core, train or calibration -> the modules of those packages it imports (module- or function-level;
    `from package import module` counts as the module, `from module import name` as the module)."""
    paths = [p for package in CHECKED_FOR_CIRCLES for p in modules(ROOT / package)]
    known = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        edges = set()
        for _, imported, _ in imports(path):
            target = imported if imported in known else ".".join(imported.split(".")[:-1])
            if target in known and target != module_name(path) and target not in CHECKED_FOR_CIRCLES:
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


def test_no_import_circle_among_core_train_and_calibration_modules():
    """A module that imports another which (even lazily, inside a function) imports it back is one concept split in
    two; put what both need in a third module below them (e.g. core.io.image_limits)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_check_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
