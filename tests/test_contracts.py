"""The house's layers, as docs/DESIGN.md draws them: the command layer (console scripts, the `moskd`
umbrella, moskd/sections.py, the pipeline) on top, then the stages in pipeline order, then the
library (the rest of moskd/). The library imports no stage and no command; a stage never imports a
later stage or the command layer; nothing dispatches by a module-name string; no import circle; and
no module but moskd/run.py spells a run-directory path."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from moskd.cli import COMMANDS, main as moskd_main
from moskd.run import RunDir
from moskd.sections import PipelineConfig

ROOT = Path(__file__).resolve().parent.parent
STAGE_PACKAGES = ("teacher", "students", "selector", "inference")  # pipeline order
CORE = ROOT / "moskd"
COMMAND_LAYER = {CORE / "cli.py", CORE / "sections.py", CORE / "pipeline.py",
                 *(ROOT / pkg / "cli.py" for pkg in STAGE_PACKAGES)}
PROJECT = ("moskd", *STAGE_PACKAGES)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PROJECT:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports too), with `from X import Y`
    also giving X.Y (a submodule, when Y is one)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def _project_imports(path: Path) -> set[str]:
    return {m for m in _imports(path) if m in _modules() and _modules()[m] != path}


def test_the_library_imports_no_stage_and_no_command():
    for path in sorted(CORE.glob("*.py")):
        if path in COMMAND_LAYER:
            continue
        bad = {m for m in _imports(path) if m.split(".")[0] in STAGE_PACKAGES}
        bad |= {m for m in _project_imports(path) if _modules()[m] in COMMAND_LAYER}
        assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("k, pkg", list(enumerate(STAGE_PACKAGES)))
def test_a_stage_imports_no_later_stage_and_no_command(k, pkg):
    later = set(STAGE_PACKAGES[k + 1:])
    for path in sorted((ROOT / pkg).rglob("*.py")):
        if path in COMMAND_LAYER:
            continue
        found = _project_imports(path)
        assert not {m for m in found if m.split(".")[0] in later}, (path, found)
        assert not {m for m in found if _modules()[m] in COMMAND_LAYER}, (path, found)


def test_no_dispatch_by_module_name_strings():
    for path in _modules().values():
        text = path.read_text()
        assert "import_module" not in text and "__import__" not in text, path
        # nor a project module named in a string ("students.train", "teacher.cli:Config")
        assert not re.search(r"""["'](moskd|teacher|students|selector|inference)\.\w+[:"']""", text), path


def test_no_import_circle():
    graph = {m: _project_imports(p) for m, p in _modules().items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import circle: " + " -> ".join(trail[trail.index(n):] + [m, n]
                                                                      if n in trail else [m, n])
            if n not in state:
                visit(n, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_every_command_answers_help(cli):
    for name in COMMANDS:
        if name == "serve":
            pytest.importorskip("fastapi")
        code, out, err = cli(moskd_main, [name, "--help"])
        assert code == 0 and "usage:" in out, (name, err)
    code, _, err = cli(moskd_main, ["reprot"])
    assert code == 2 and "did you mean report?" in err and err.count("\n") == 1


def test_pipeline_steps_run_the_stages_in_order_into_the_run_layout(tmp_path):
    from moskd.pipeline import steps

    run = RunDir(tmp_path)
    todo = steps(PipelineConfig(run_dir=str(tmp_path)), None)
    assert [s.out for s in todo if s.out is not None] == [
        run.teacher.path, run.student("densenet121").path, run.student("densenet121-baseline").path,
        run.student("googlenet").path, run.student("googlenet-baseline").path, run.selector.path]
    assert todo[1].title == "teacher-logit cache" and todo[-1].title.startswith("routing policy")
    assert len(steps(PipelineConfig(run_dir=str(tmp_path), baselines=False), None)) == len(todo) - 2


def test_every_architecture_is_in_the_library_registry():
    import torch

    import moskd.models

    assert {"resnet50", "densenet121", "googlenet", "selector_cnn"} <= set(moskd.models.REGISTRY)  # tests add theirs
    assert moskd.models.create_model("selector_cnn", 2, 1, width=2)(torch.zeros(1, 1, 8, 8)).shape == (1, 2)


def test_checkpoint_and_models_import_cycle_is_gone():
    assert "moskd.models" not in _imports(CORE / "checkpoint.py")
    assert "moskd.checkpoint" in _imports(CORE / "models.py")


def test_command_layer_loads_no_torch_at_import():
    """`moskd --help` imports the command layer: none of its modules may import torch at module level."""
    for path in sorted(COMMAND_LAYER | {ROOT / pkg / "config.py" for pkg in STAGE_PACKAGES}):
        top = ast.parse(path.read_text()).body  # module-level imports only
        mods = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in mods if m.split(".")[0] in ("torch", "torchvision", "timm")}, path


# ---------------------------------------------------------------- one owner of the layout

RUN_PATH_LITERAL = re.compile(  # a quoted file name of the layout, or a quoted folder joined with `/`
    r"""(?<!["'])["'](best\.pt|last\.pt|summary\.json|metrics\.jsonl|config\.yaml|labels\.pt|curves\.png|"""
    r"""report\.json|report\.md|meta\.json|seeds\.json|seeds\.md|pipeline_timings\.json)["']"""
    r"""|["']views-k\{|["'](eval|plots)(-limit)?["'{]"""
    r"""|/\s*f?["'](teacher|students|selector|eval|plots|sweep|cache|seed\{)""")


def test_no_module_but_run_py_spells_a_run_path():
    # benchmarks/mutation_check.py quotes source lines to mutate, not paths of its own
    sources = [p for d in ("moskd", *STAGE_PACKAGES, "benchmarks") for p in sorted((ROOT / d).glob("*.py"))
               if p.name != "mutation_check.py"]
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sources if p != CORE / "run.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if RUN_PATH_LITERAL.search(line)]
    assert not offenders, "\n".join(offenders)


def test_the_literal_check_catches_a_path_literal():
    assert RUN_PATH_LITERAL.search('out = run_dir / "teacher" / "best.pt"')
    assert RUN_PATH_LITERAL.search("summary_file = out / 'summary.json'")
    assert RUN_PATH_LITERAL.search('folder = Path(run_dir) / ("eval" if limit is None else f"eval-limit{limit}")')
    assert RUN_PATH_LITERAL.search('return Path(run_dir) / "teacher" / "cache" / f"views-k{k}.pt"')
    assert not RUN_PATH_LITERAL.search('"""Writes RUN/teacher/{best.pt,last.pt}."""')
    assert not RUN_PATH_LITERAL.search('''"""report.json's content from the saved arrays."""''')
