"""Contracts between the core and the stage folders: each stage declares its commands and its
pipeline steps (moskd.stages), its outputs live where moskd.run says, its --help answers; the core
imports no stage, and no module but moskd/run.py spells a run-directory path."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from moskd.cli import main as moskd_main
from moskd.run import RunDir
from moskd.stages import StageInfo, commands, model_modules, pipeline_steps, stages

ROOT = Path(__file__).resolve().parent.parent
STAGE_PACKAGES = ("teacher", "students", "selector", "inference")
CORE = ROOT / "moskd"


def test_every_stage_folder_declares_itself_in_order():
    found = stages()
    assert [s.name for s in found] == list(STAGE_PACKAGES)
    assert [s.order for s in found] == sorted(s.order for s in found)
    for pkg in STAGE_PACKAGES:
        assert isinstance(__import__(f"{pkg}.stage", fromlist=["STAGE"]).STAGE, StageInfo)
    from moskd.cli import STAGES

    assert [s.name for s in STAGES] == list(STAGE_PACKAGES)  # listed once, where the umbrella dispatches
    assert "entry-points" not in (ROOT / "pyproject.toml").read_text()  # and nowhere else


@pytest.mark.parametrize("pkg", STAGE_PACKAGES)
def test_stage_commands_exist_and_answer_help(pkg, cli):
    info = next(s for s in stages() if s.name == pkg)
    assert info.commands, f"{pkg} declares no command"
    for c in info.commands:
        assert c.module.split(".")[0] == pkg  # a stage's commands live in its own folder
        if c.name == "serve":
            pytest.importorskip("fastapi")
        code, out, err = cli(moskd_main, [c.name, "--help"])
        assert code == 0 and "usage:" in out and ("--run-dir" in out or "--bundle" in out), (c.name, err)


@pytest.mark.parametrize("pkg", STAGE_PACKAGES)
def test_stage_outputs_live_where_the_run_dir_says(pkg, tmp_path):
    run = RunDir(tmp_path)
    info = next(s for s in stages() if s.name == pkg)
    steps = info.steps(run, {"baselines": True}) if info.steps else []
    assert steps, f"{pkg} declares no pipeline step"
    folders = {s.out for s in steps if s.out is not None}
    allowed = {run.teacher.path, run.selector.path} | {p.path for p in map(run.student, _students(steps))}
    assert folders <= allowed, folders - allowed
    for s in steps:
        assert s.kind in ("train", "report") and s.module.split(".")[0] == pkg


def _students(steps) -> list[str]:
    from moskd.values import SEED_STUDENTS

    return [RunDir.student_name(a, b) for a in SEED_STUDENTS.values() for b in (False, True)]


def test_pipeline_runs_the_stages_in_declared_order(tmp_path):
    run = RunDir(tmp_path)
    steps = pipeline_steps(run, {"baselines": True})
    modules = [s.module.split(".")[0] for s in steps]
    assert modules == sorted(modules, key=STAGE_PACKAGES.index)  # no stage after a later one
    assert steps[0].out == run.teacher.path and steps[-1].kind == "report"
    assert len(pipeline_steps(run, {"baselines": False})) == len(steps) - 2  # one baseline per seed student


def test_stage_commands_and_core_commands_are_all_dispatched(cli):
    code, out, _ = cli(moskd_main, ["--help"])
    for name in [*commands(), "pipeline", "results", "clean"]:
        assert f"  {name} " in out, name
    code, _, err = cli(moskd_main, ["reprot"])
    assert code == 2 and "did you mean report?" in err and err.count("\n") == 1


def test_declared_models_register_from_one_import():
    import moskd.models

    assert model_modules() == ["selector.model"]
    assert "selector_cnn" in moskd.models.available_models()  # no `import selector.model` needed


# ---------------------------------------------------------------- the core names no stage


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at any depth (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_no_stage():
    """Only the umbrella command names the stages (their light declarations); the library does not."""
    declarations = {f"{pkg}.stage" for pkg in STAGE_PACKAGES}
    assert {m for m in _imports(CORE / "cli.py") if m.split(".")[0] in STAGE_PACKAGES} == declarations
    for path in sorted(CORE.glob("*.py")):
        if path.name == "cli.py":
            continue
        bad = {m for m in _imports(path) if m.split(".")[0] in STAGE_PACKAGES}
        assert not bad, f"{path.name} imports {bad}"
        # nor by name through importlib: the stage list comes from the declarations
        assert not re.search(r"""["'](teacher|students|selector|inference)\.\w+["']""", path.read_text()), path.name


def test_checkpoint_and_models_import_cycle_is_gone():
    assert "moskd.models" not in _imports(CORE / "checkpoint.py")
    assert "moskd.checkpoint" in _imports(CORE / "models.py")


def test_stage_declarations_are_light():
    """`moskd --help` reads every declaration: they must not pull in torch."""
    for pkg in STAGE_PACKAGES:
        heavy = {m for m in _imports(ROOT / pkg / "stage.py") if m.split(".")[0] in ("torch", "torchvision", "timm")}
        assert not heavy, pkg
    for name in ("stages.py", "run.py", "cli.py"):
        top = ast.parse((CORE / name).read_text()).body  # module-level imports only
        mods = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in mods if m.split(".")[0] == "torch"}, name


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
