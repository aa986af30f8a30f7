"""The import graph: every module imports alone (no hidden cycle), imports point down the layers only, and the
CLI's module imports no heavy library (so `harness --help` stays instant)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("harness", "train", "tasks")
NAMESPACE = "manyicl."  # how the folders install (pyproject.toml's package-dir); LAYERS name modules without it

# Lower layers first; a module may import its own layer or any below, never one above. Within a layer the
# cycle test below keeps the graph a tree.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("harness.errors",),
    ("harness.runs", "harness.processes", "harness.tiny", "tasks.lm_eval_metrics"),
    ("harness.settings", "harness.results", "harness.schemas", "harness.stats", "harness.launch"),
    ("harness.paired", "harness.coverage"),
    ("tasks.formats", "tasks.registry", "harness.models"),
    ("train.sequences", "train.distributed", "train.checkpoints", "harness.hf_ranks"),
    ("harness.prompts", "harness.serve", "harness.backend_choice", "harness.leaderboard", "harness.plots", "harness.claims",
     "train.trainer", "harness.preview", "harness.prefix_scorer", "harness.cascade_attention"),
    ("harness.lm_eval_bridge", "harness.report", "harness.study_display", "harness.study_stages"),
    ("harness.evaluate", "harness.score_worker"),
    ("harness.study", "harness.study_estimate", "harness.study_fit", "harness.shared_server"),
    ("harness.cli_options",),
    ("harness.cli",),
)
LAYER_OF = {module: i for i, layer in enumerate(LAYERS) for module in layer}


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            if path.name != "__init__.py":
                found.append(f"{package}.{path.stem}")
    return found


MODULES = _modules()


def _project_imports(module: str) -> set[str]:
    """The project modules `module` imports anywhere in its body (function-level imports included)."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from harness import serve` imports the module harness.serve
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        names = [name.removeprefix(NAMESPACE) for name in names]
        found |= {name for name in names if name in LAYER_OF or name in MODULES}
    return found - {module}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m not in LAYER_OF]
    assert not missing, f"add {missing} to LAYERS in this test"


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module):
    """A fresh interpreter per module: a cycle that an earlier import happened to hide shows up here."""
    # run outside the repository, so only the installed namespace can answer
    result = subprocess.run([sys.executable, "-c", f"import {NAMESPACE}{module}"], cwd=ROOT.parent,
                            capture_output=True, text=True, timeout=120, env=_env_without_repo())
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    upward = sorted(m for m in _project_imports(module) if LAYER_OF.get(m, -1) > LAYER_OF[module])
    assert not upward, f"{module} (layer {LAYER_OF[module]}) imports higher layers: {upward}"


def test_no_import_cycle():
    graph = {m: _project_imports(m) & set(MODULES) for m in MODULES}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, node, nxt][path.index(nxt) if nxt in path else 0:]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [])


def test_the_layer_rule_is_checked_by_the_parser():
    """The checks above would pass vacuously if the parser found nothing: the study does import its stages."""
    assert "harness.study_stages" in _project_imports("harness.study")
    assert "harness.settings" in _project_imports("harness.study_stages")


def test_cli_imports_no_heavy_library():
    code = ("import sys, manyicl.harness.cli; "
            "print(','.join(m for m in ('torch', 'transformers', 'trl', 'lm_eval', 'vllm', 'datasets', 'peft') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""


def _env_without_repo() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize("module", MODULES)
def test_imports_use_the_namespace(module):
    """Every project import says `manyicl.`: a bare `harness`/`train`/`tasks` import would load a second copy of
    the module from the working directory (or fail once installed)."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    bare = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bare += [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] in PACKAGES:
            bare.append(node.module)
    assert not bare, f"{module} imports {bare} without the `manyicl.` namespace"


def test_top_level_folders_are_not_installed_bare():
    """Installed, only `manyicl.harness` exists: nothing named `train` or `tasks` lands in site-packages."""
    code = "import importlib.util as u; print([n for n in ('harness', 'train', 'tasks') if u.find_spec(n)])"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True,
                            timeout=60, env=_env_without_repo())
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
