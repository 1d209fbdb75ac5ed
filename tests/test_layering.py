"""The layering rule: `*/config.py` hold data and value checks only, names are checked against
the registries in treepo_lab/config.py, configs are checked and shown without torch, and the package
has no import cycle, not even one dodged by an import inside a function."""
from __future__ import annotations

import ast
import re
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from treepo_lab.algo.registries import ESTIMATORS, POLICY_LOSSES
from treepo_lab.engines.factory import ENGINES

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "treepo_lab"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


NO_TORCH = "import sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('treepo'))"


def test_show_and_config_errors_run_without_torch():
    code = f"""
from treepo_lab.cli import main
from treepo_lab.config import list_experiments, load_config
for name in list_experiments():
    load_config(name)
assert main(["show", "experiment=seg_4x32", "sampler.width=8"]) == 0
for bad in (["sampler.branch=0"], ["advantage.estimator=gae"], ["loss.name=dpo"], ["engine.name=tgi"],
            ["sampler.stop_rules=[eos,max_length,max_depth,nope]"], ["sampler.shape=4x32", "sampler.max_depth=8"]):
    assert main(["show", *bad]) == 2, bad
{NO_TORCH}
"""
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "segment_len: 32" in proc.stdout and "is not allowed" in proc.stderr


@pytest.mark.parametrize("registry", [ESTIMATORS, POLICY_LOSSES, ENGINES], ids=lambda r: r.kind)
def test_every_declared_name_resolves_to_its_marked_implementation(registry):
    for name in registry.names():
        obj = registry.get(name)
        assert getattr(obj, "_registered_as", None) == (registry.kind, name), name


METHODS = [f"treepo_lab.methods.{p.stem}" for p in sorted((PKG / "methods").glob("*.py")) if p.stem != "__init__"]


@pytest.mark.parametrize("registry,modules", [
    (ESTIMATORS, ["treepo_lab.algo.advantage", *METHODS]),
    (POLICY_LOSSES, ["treepo_lab.algo.loss"]),
    (ENGINES, ["treepo_lab.engines.hf_build", "treepo_lab.engines.vllm_engine"]),
], ids=lambda x: getattr(x, "kind", ""))
def test_every_implementation_is_declared(registry, modules):
    marked = {getattr(obj, "_registered_as", (None, None))[1]
              for m in modules for obj in vars(importlib.import_module(m)).values()
              if getattr(obj, "_registered_as", (None,))[0] == registry.kind}
    assert marked == set(registry.names())


def test_an_undeclared_or_misplaced_implementation_fails_at_import():
    from treepo_lab.registry import Registry

    reg = Registry("thing")
    reg.declare("a", f"{__name__}:elsewhere")
    with pytest.raises(KeyError, match="not declared"):
        reg.implements("b")(lambda: None)
    with pytest.raises(KeyError, match="declared as"):
        reg.implements("a")(test_an_undeclared_or_misplaced_implementation_fails_at_import)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """treepo_lab modules `path` imports (a `from pkg import sub` names the submodule)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("treepo_lab")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("treepo_lab"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            out |= subs or {node.module}
    return {m for m in out if m in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack + [node, nxt]
            if nxt not in state and (found := visit(nxt, stack + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_cycles_even_through_imports_inside_functions():
    graph = {name: _imports(path, top_level_only=False) - {name} for name, path in MODULES.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


CONFIG_MODULES = sorted(p for p in PKG.glob("*/config.py"))


@pytest.mark.parametrize("path", CONFIG_MODULES, ids=lambda p: p.parent.name)
def test_section_configs_are_data_and_value_checks_only(path):
    """A section config imports only the registry's ConfigError and other section configs, and no
    registry lives there (names are checked in treepo_lab/config.py)."""
    allowed = {"treepo_lab.registry"} | {_module_name(p) for p in CONFIG_MODULES}
    imported = _imports(path, top_level_only=False)
    assert imported <= allowed, imported - allowed
    tree = ast.parse(path.read_text())
    assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) for f in ast.walk(tree)
                   if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)), \
        "no imports inside functions"
    assert "Registry(" not in path.read_text() and "torch" not in {
        a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_no_package_cycles():
    """Sub-packages depend one way (track never on analysis, whose reports read what track writes). A
    section's config.py is data every layer may read (treepo_lab/config.py composes them): its own node."""
    def pkg(module: str) -> str:
        in_sub = MODULES[module].parent != PKG and not module.endswith(".config")
        return module.split(".")[1] if in_sub else module

    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph.setdefault(pkg(name), set()).update(pkg(m) for m in _imports(path, top_level_only=False))
    graph = {k: v - {k} for k, v in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_tag_and_attribute_names_live_in_one_module():
    """A tag written by one package and read by another is the same constant (treepo_lab/tags.py)."""
    literal = re.compile(r"""["'](treepo\.[a-z_]+|tags\.treepo\.[a-z_]+)["']""")
    offenders = [f"{p.relative_to(ROOT)}: {m}" for p in PKG.rglob("*.py") if p.name != "tags.py"
                 for m in literal.findall(p.read_text())]
    assert not offenders, offenders
