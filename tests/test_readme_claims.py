"""What README.md and `--help` say about the commands, checked against the code: which flags each
command takes, which commands parse before they import torch, the test files the sources cite."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moskd.cli import main as moskd_main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SUBCOMMAND = {"teacherTrain": "teacher", "StudentTrain": "student", "trainSelector": "selector",
              "inference": "inference"}  # console script -> its `moskd` subcommand


def readme_table() -> dict[str, dict[str, bool]]:
    """README's command table: `moskd` subcommand -> {column: yes/no}."""
    head = re.search(r"^\| command \| (.+) \|$", README, flags=re.M)
    columns = [c.strip().strip("`") for c in head.group(1).split("|")]
    rows = {}
    for line in README[head.end():].strip().splitlines()[1:]:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        command = cells[0].strip("`")
        name = SUBCOMMAND.get(command, command.removeprefix("moskd "))
        rows[name] = {c: v == "yes" for c, v in zip(columns, cells[1:])}
    return rows


def usage_flags(cli, name: str) -> set[str]:
    if name == "serve":
        pytest.importorskip("fastapi")
    code, out, err = cli(moskd_main, [name, "--help"])
    assert code == 0, err
    usage = out.split("\n\n")[0]  # the usage block names every option the parser takes
    return set(re.findall(r"(--[a-z][a-z-]*)", usage))


def test_readme_table_lists_every_command():
    from moskd.cli import COMMANDS

    assert set(readme_table()) == set(COMMANDS)


def test_readme_subcommand_list_names_every_command():
    from moskd.cli import COMMANDS

    listed = re.search(r"`moskd COMMAND` runs the same commands \(`moskd ([a-z|]+)`\)", README)
    assert listed and listed.group(1).split("|") == list(COMMANDS)


def test_inference_help_states_the_exit_code_it_uses(cli):
    code, out, _ = cli(moskd_main, ["inference", "--help"])
    text = " ".join(out.split())
    assert code == 0 and "The exit code is 2 when any input failed" in text and "exit code is 1" not in text


def test_readme_opening_says_which_family_each_committed_result_deployed():
    """The README's opening names the policy family each committed multi-seed result deployed (from
    the committed seed<k>-policy.json files), and claims no selector routing where none shipped."""
    import json

    opening = README.split("## ", 1)[0]
    for folder in sorted((ROOT / "docs" / "results").iterdir()):
        policies = sorted(folder.glob("seed*-policy.json"))
        if not policies:
            continue
        families = sorted({json.loads(p.read_text())["family"] for p in policies})
        line = next((x for x in opening.splitlines() if f"`{folder.name}`" in x), "")
        assert line and all(f in line for f in families), (folder.name, families)
    assert "then *only* the chosen student" not in opening


@pytest.mark.parametrize("name", sorted(readme_table()))
def test_each_command_takes_the_flags_readme_says(name, cli):
    flags = usage_flags(cli, name)
    for column, claimed in readme_table()[name].items():
        if column.startswith("--"):
            assert (column in flags) == claimed, f"README says {name} {'takes' if claimed else 'lacks'} {column}"


@pytest.mark.parametrize("name", sorted(n for n, row in readme_table().items() if row["parses before torch"]))
def test_commands_readme_says_parse_first_answer_a_bad_flag_without_torch(name):
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO TORCH'))\n"
             "from moskd.cli import main\n"
             f"main([{name!r}, '--no-such-flag'])\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and done.stdout.strip() == "NO TORCH", (name, done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and ": error: " in done.stderr, done.stderr


def test_every_cited_test_file_exists():
    cited = set()
    for path in [*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py")]:
        if ".venv" not in path.parts:
            cited |= set(re.findall(r"tests/test_\w+\.py", path.read_text()))
    assert cited and not {c for c in cited if not (ROOT / c).is_file()}


def test_export_fast_help_states_the_tolerance_folding_allows(cli):
    from moskd.fold import fold_batchnorm

    atol = inspect.signature(fold_batchnorm).parameters["atol"].default
    code, out, _ = cli(moskd_main, ["export", "--help"])
    text = " ".join(out.split())
    said = re.search(r"([0-9.e-]+) of the output scale", text)
    assert code == 0 and said and float(said.group(1)) == atol, text
