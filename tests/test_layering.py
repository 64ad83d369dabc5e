"""The import graph of the project points one way (read from the source, imports inside functions
included): no circle; the linen modules and the quantization math import no converter; the config
imports only leaves (activation names, the hub resolver, the atomic-write helper); training sees the models, not the
modules or the converters; the generation package does not import the models."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bertgen_jax", "converters")


def _modules() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
                    found[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """Project modules that `module` imports anywhere in its file."""
    path = MODULES[module]
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def test_no_import_circle():
    state: dict[str, int] = {}

    def visit(module, trail):
        if state.get(module) == 2:
            return
        if state.get(module) == 1:
            raise AssertionError("import circle: " + " -> ".join(trail[trail.index(module):] + [module]))
        state[module] = 1
        for other in sorted(GRAPH[module]):
            visit(other, trail + [module])
        state[module] = 2

    for module in sorted(GRAPH):
        visit(module, [])


def _reach(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for other in GRAPH[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


@pytest.mark.parametrize("module", ["bertgen_jax.modules", "bertgen_jax.bert_family", "bertgen_jax.quantization",
                                    "bertgen_jax.activations",
                                    "bertgen_jax.inputs"])
def test_modules_import_no_converter(module):
    assert not {m for m in GRAPH[module] if m.startswith("converters")}, GRAPH[module]
    # Through the config they reach only the standard-library atomic-write leaf.
    assert {m for m in _reach(module) if m.startswith("converters")} <= {"converters", "converters.files"}


def test_config_imports_nothing_above_it():
    # Only leaves: activation names, the hub resolver (huggingface_hub only), the atomic-write helper.
    leaves = {"bertgen_jax.activations", "bertgen_jax.hub", "converters.files"}
    assert _reach("bertgen_jax.config") <= leaves | {"converters"}
    for leaf in leaves | {"bertgen_jax.inputs"}:
        assert GRAPH[leaf] == set(), (leaf, GRAPH[leaf])


def test_training_imports_models_not_modules_or_converters():
    training = [m for m in MODULES if m.startswith("bertgen_jax.training")]
    assert training
    for module in training:
        bad = {m for m in GRAPH[module] if m.startswith("converters") or m == "bertgen_jax.modules"}
        assert not bad, f"{module} imports {sorted(bad)}"
    assert "bertgen_jax.models" in GRAPH["bertgen_jax.training.step"]


def test_generation_gets_no_model_object():
    for module in [m for m in MODULES if m.startswith("bertgen_jax.generation")]:
        assert "bertgen_jax.models" not in _reach(module), module


def test_tokenization_imports_no_model_code():
    # A server imports `bertgen_jax.tokenization.AutoTokenizer` without flax or the models.
    package = [m for m in MODULES if m.startswith("bertgen_jax.tokenization")]
    assert len(package) > 1
    allowed = {"bertgen_jax", "bertgen_jax.hub", "converters", "converters.files"}
    for module in package:
        outside = {m for m in _reach(module) if not m.startswith("bertgen_jax.tokenization")}
        assert outside <= allowed, f"{module} reaches {sorted(outside - allowed)}"


def test_tokenization_imports_without_flax_or_jax():
    import subprocess
    import sys

    code = ("import sys; from bertgen_jax.tokenization import AutoTokenizer; "
            "loaded = sorted(m for m in ('flax', 'jax', 'bertgen_jax.models', 'bertgen_jax.modules') if m in sys.modules); "
            "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
