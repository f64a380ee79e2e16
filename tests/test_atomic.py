"""Every file moskd writes goes through the one atomic writer (moskd.atomic.atomic_write): a kill
mid-write leaves the old file whole. Two guards: each writer, killed while its new bytes are on
their way to disk, leaves the old file exactly as it was; and no module of the packages writes a
file any other way (a static check over the source, so a new writer cannot slip past)."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import moskd.atomic
from moskd.atomic import atomic_write, write_bytes, write_json, write_text

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("moskd", "teacher", "students", "selector", "inference")
OLD = b"the old file, whole\n"


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs, no handler catches it as an Exception."""


def _writers(tmp_path: Path) -> dict:
    """name -> (target path, call that writes it). Every kind of file the commands write."""
    from inference.output import write_rows
    from inference.report import save_eval
    from inference.report_plots import plot_confusions
    from moskd.checkpoint import save_checkpoint
    from moskd.config import write_config
    from moskd.engine import write_metrics
    from moskd.plots import plot_curves
    from moskd.settings import TrainConfig
    from students.sweep import write_csv

    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5,
                                                     "select_acc": 0.5}) + "\n")
    row = {"path": "a.png", "class_index": 1, "class_name": "1", "probability": 0.9, "student": "s",
           "p_right": {"s": 0.8}, "error": None}
    report = {"models": {"t": {"confusion": [[1, 0], [0, 1]], "accuracy": 1.0}}, "class_names": ["0", "1"]}
    return {
        "write_bytes": (tmp_path / "a.bin", lambda p: write_bytes(p, b"new" * 1000)),
        "write_text": (tmp_path / "a.md", lambda p: write_text(p, "new\n" * 1000)),
        "write_json": (tmp_path / "summary.json", lambda p: write_json(p, {"new": list(range(100))})),
        "save_checkpoint": (tmp_path / "best.pt", lambda p: save_checkpoint({"model": {"w": torch.ones(64)}}, p)),
        "write_config": (tmp_path / "config.yaml", lambda p: write_config(TrainConfig(), p)),
        "write_metrics": (stage / "metrics.jsonl", lambda p: write_metrics(p, [{"epoch": 1}, {"epoch": 2}])),
        "plot_curves": (stage / "curves.png", lambda p: plot_curves(stage, p)),
        "plot_confusions": (tmp_path / "confusion.png", lambda p: plot_confusions(report, p)),
        "save_eval": (tmp_path / "test.npz", lambda p: save_eval(p, {"labels": np.arange(10)})),
        "write_rows": (tmp_path / "rows.csv", lambda p: write_rows([row], str(p), "csv", ["s"])),
        "write_csv": (tmp_path / "runs.csv", lambda p: write_csv([{"a": 1, "b": 2}], p)),
    }


WRITERS = ["write_bytes", "write_text", "write_json", "save_checkpoint", "write_config", "write_metrics",
           "plot_curves", "plot_confusions", "save_eval", "write_rows", "write_csv"]


@pytest.mark.parametrize("name", WRITERS)
def test_a_writer_killed_mid_write_leaves_the_old_file_whole(name, tmp_path, monkeypatch):
    target, write = _writers(tmp_path)[name]
    target.write_bytes(OLD)
    seen = []
    real_fsync = os.fsync

    def kill_at_fsync(fd):  # the new bytes are written but not yet durable: the moment a kill tears files
        seen.append(target.read_bytes())
        raise Killed

    monkeypatch.setattr(moskd.atomic.os, "fsync", kill_at_fsync)
    with pytest.raises(Killed):  # a writer that never fsyncs its bytes is not atomic either
        write(target)
    assert seen == [OLD] and target.read_bytes() == OLD, f"{name} wrote through the target before it was durable"
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == []  # no temporary left
    monkeypatch.setattr(moskd.atomic.os, "fsync", real_fsync)
    write(target)
    assert target.read_bytes() != OLD and oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_atomic_write_renames_then_syncs_the_folder(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(moskd.atomic.os, "fsync", lambda fd: calls.append(("fsync", os.fstat(fd).st_mode)) or
                        real_fsync(fd))
    monkeypatch.setattr(moskd.atomic.os, "replace", lambda a, b: calls.append(("replace",)) or real_replace(a, b))
    atomic_write(tmp_path / "x", lambda f: f.write(b"x"))
    kinds = [c[0] if c[0] == "replace" else ("dir" if os.path.stat.S_ISDIR(c[1]) else "file") for c in calls]
    assert kinds == ["file", "replace", "dir"] and (tmp_path / "x").read_bytes() == b"x"


# ---------------------------------------------------------------- no other way to write a file

WRITE_CALLS = {"write_text", "write_bytes", "replace", "rename", "mkstemp", "NamedTemporaryFile", "link"}
SERIALISERS = {"save", "savez", "savez_compressed", "savefig", "safe_dump", "dump"}  # given a file to write into
ALLOWED = {  # (file, call): why it is not a file write of its own
    ("moskd/atomic.py", "*"): "the one writer",
    ("moskd/profile.py", "save"): "torch.save into a BytesIO to count bytes",
    ("moskd/pipeline.py", "link"): "hard-links a finished teacher's files (same inodes, nothing written)",
    ("moskd/config.py", "replace"): "str.replace",
    ("moskd/config.py", "safe_dump"): "YAML text, written by write_text",
    ("inference/export.py", "mkdtemp"): "the temporary bundle folder (written file by file through the writer "
                                        "or the exporters, then swapped in whole by moskd.atomic.swap_folder)",
    ("inference/export.py", "save"): "torch.export.save of one program into that temporary folder",
    ("inference/quantize.py", "replace"): "moves the chosen int8 file within export's temporary bundle folder",
    ("inference/tune.py", "replace"): "moves the chosen int8 file within export's temporary bundle folder",
    ("inference/output.py", "open"): "prediction rows appended and flushed as they are predicted, so an "
                                     "interrupted job keeps them (inference --resume continues the file)",
    ("inference/output.py", "truncate"): "--resume cuts a row a kill left half written",
}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name:
                yield node, name


def _in_writer_lambda(node: ast.Call, parents: dict) -> bool:
    """A serialiser call `torch.save(obj, f)` inside `atomic_write(path, lambda f: ...)`, writing to f."""
    p = parents.get(node)
    while p is not None and not isinstance(p, ast.Lambda):
        p = parents.get(p)
    if p is None or not isinstance(parents.get(p), ast.Call):
        return False
    outer = parents[p].func
    arg = p.args.args[0].arg if p.args.args else None
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    return getattr(outer, "id", getattr(outer, "attr", None)) == "atomic_write" and arg in names


def test_no_module_writes_a_file_except_through_the_one_writer():
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if (rel, "*") in ALLOWED:
                continue
            tree = ast.parse(path.read_text())
            parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
            for node, name in _calls(tree):
                if (rel, name) in ALLOWED:
                    continue
                if name == "open":
                    mode = node.args[1] if len(node.args) > 1 else next(
                        (k.value for k in node.keywords if k.arg == "mode"), None)
                    if isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
                        bad.append(f"{rel}:{node.lineno} open(..., {mode.value!r})")
                elif name in WRITE_CALLS or name == "mkdtemp":
                    if not isinstance(node.func, ast.Attribute) and name in ("write_text", "write_bytes"):
                        continue  # moskd.atomic's functions of those names
                    if name == "replace" and isinstance(node.func, ast.Attribute) and (
                            getattr(node.func.value, "id", None) == "dataclasses"
                            or (len(node.args) == 2 and isinstance(node.args[0], ast.Constant))):
                        continue  # dataclasses.replace(cfg, ...), str.replace("a", "b")
                    bad.append(f"{rel}:{node.lineno} {name}()")
                elif name in SERIALISERS and not _in_writer_lambda(node, parents):
                    bad.append(f"{rel}:{node.lineno} {name}() outside atomic_write")
    assert not bad, "files written outside moskd.atomic.atomic_write:\n" + "\n".join(bad)
