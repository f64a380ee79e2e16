"""Prediction rows as scripts and people read them: the row of one input, the CSV/JSON Lines
writer (a file written atomically, or stdout), and the table for the terminal. Column meanings are
documented in inference.cli (the command's --help)."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from moskd.atomic import write_text
from moskd.errors import MoskdError

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def prediction_row(path, class_index: int, class_name: str, probability: float, student: str,
                   p_right: dict[str, float]) -> dict:
    return {"path": str(path), "class_index": class_index, "class_name": class_name, "probability": probability,
            "student": student, "p_right": p_right, "error": None}


def failed_row(path, why: str) -> dict:
    """The row of an input that could not be predicted: every prediction column empty."""
    return {"path": str(path), "class_index": None, "class_name": None, "probability": None, "student": None,
            "p_right": None, "error": why}


def output_format(output: str | None, fmt: str | None) -> str | None:
    """csv or jsonl for --output (from --output-format, else the suffix; - is csv); one line if unclear."""
    if output is None:
        if fmt is not None:
            raise MoskdError("--output-format needs --output FILE or --output -")
        return None
    if output == "-":
        return fmt or "csv"
    p = Path(output)
    if p.is_dir():
        raise MoskdError(f"--output {output} is a folder; pass a file name ending in .csv or .jsonl, or -")
    suffix = FORMATS.get(p.suffix.lower())
    if suffix is None and fmt is None:
        raise MoskdError(f"--output {output}: use a file name ending in .jsonl or .csv (or pass --output-format)")
    return fmt or suffix


def render(rows: list[dict], fmt: str, student_names: list[str]) -> str:
    buf = io.StringIO()
    if fmt == "jsonl":
        buf.writelines(json.dumps(r) + "\n" for r in rows)
        return buf.getvalue()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "class_index", "class_name", "probability", "student",
                *[f"p_right_{n}" for n in student_names], "error"])
    for r in rows:
        if r["error"] is not None:
            w.writerow([r["path"], "", "", "", "", *[""] * len(student_names), r["error"]])
            continue
        w.writerow([r["path"], r["class_index"], r["class_name"], f"{r['probability']:.6f}", r["student"],
                    *[f"{r['p_right'][n]:.6f}" for n in student_names], ""])
    return buf.getvalue()


def write_rows(rows: list[dict], output: str, fmt: str, student_names: list[str]) -> None:
    """To stdout (-) or to a file, atomically (a temporary file, then rename)."""
    text = render(rows, fmt, student_names)
    if output == "-":
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader (e.g. head) stopped early: not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    write_text(output, text)


def format_table(rows: list[dict], student_names: list[str]) -> str:
    """Aligned columns for a terminal; failed inputs show their error in the last column."""
    if not rows:
        return "(no inputs)"
    failed = any(r["error"] is not None for r in rows)
    head = ["path", "class", "name", "prob", "student", *[f"p_right:{n}" for n in student_names]]
    head += ["error"] if failed else []
    body = []
    for r in rows:
        if r["error"] is not None:
            body.append([r["path"], *["-"] * (4 + len(student_names)), r["error"]])
            continue
        body.append([r["path"], str(r["class_index"]), r["class_name"], f"{r['probability']:.4f}", r["student"],
                     *[f"{r['p_right'][n]:.3f}" for n in student_names], *([""] if failed else [])])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def _header(fmt: str, student_names: list[str]) -> str:
    return render([], fmt, student_names) if fmt == "csv" else ""


def _complete_rows(path: Path, fmt: str) -> tuple[int, str | None]:
    """(rows, path of the last row) of an output file, after cutting off a last line a kill left half
    written; read line by line, so memory stays flat in the rows."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65536))
        tail = f.read()
        if tail and not tail.endswith(b"\n"):  # a half-written last row: dropped, it is predicted again
            f.truncate(size - len(tail) + tail.rfind(b"\n") + 1 if b"\n" in tail else 0)
    count, last = 0, None
    with open(path, newline="", encoding="utf-8") as f:
        if fmt == "csv":
            reader = csv.reader(f)
            next(reader, None)  # the header
            for row in reader:
                count, last = count + 1, row[0]
        else:
            for line in f:
                if line.strip():
                    count, last = count + 1, json.loads(line)["path"]
    return count, last


class RowWriter:
    """Rows written as they are predicted (CSV with its header, or JSON Lines), flushed after every
    chunk, so a killed job keeps what it predicted; resume=True appends to an existing file after its
    complete rows (`done` of them, the last for path `last`). output None: nowhere; '-': stdout."""

    def __init__(self, output: str | None, fmt: str | None, student_names: list[str], resume: bool = False):
        self.fmt, self.names, self.done, self.last = fmt, student_names, 0, None
        self.file = None
        if output is None:
            return
        if output == "-":
            self.file = sys.stdout
        elif resume and Path(output).is_file():
            self.done, self.last = _complete_rows(Path(output), fmt)
            self.file = open(output, "a", encoding="utf-8", newline="")
        else:
            self.file = open(output, "w", encoding="utf-8", newline="")
        if output == "-" or self.file.tell() == 0:
            self.file.write(_header(fmt, student_names))

    def write(self, rows: list[dict]) -> None:
        if self.file is None:
            return
        text = render(rows, self.fmt, self.names)
        if self.fmt == "csv":
            text = text.split("\n", 1)[1]  # render's header, already written once
        try:
            self.file.write(text)
            self.file.flush()
        except BrokenPipeError:  # the reader (e.g. head) stopped early: not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.file = None

    def close(self) -> None:
        if self.file is not None and self.file is not sys.stdout:
            self.file.close()


class RowSummary:
    """What the terminal shows: the table of the rows when they fit a screen (`screen` rows), else
    counts (predicted, failed, per class, per answering model) and the first failures."""

    def __init__(self, screen: int = 40):
        self.screen, self.first, self.count, self.failed = screen, [], 0, []
        self.classes: dict[str, int] = {}
        self.students: dict[str, int] = {}

    def add(self, rows: list[dict]) -> None:
        for r in rows:
            self.count += 1
            if len(self.first) <= self.screen:
                self.first.append(r)
            if r["error"] is not None:
                if len(self.failed) < 10:
                    self.failed.append(r)
                continue
            self.classes[r["class_name"]] = self.classes.get(r["class_name"], 0) + 1
            self.students[r["student"]] = self.students.get(r["student"], 0) + 1

    def text(self, student_names: list[str], failed: int) -> str:
        if self.count <= self.screen:
            return format_table(self.first, student_names)
        top = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))  # noqa: E731
        lines = [f"{self.count} input(s): {self.count - failed} predicted, {failed} failed",
                 f"classes: {top(self.classes)}", f"answered by: {top(self.students)}"]
        lines += [f"failed: {r['path']}: {r['error']}" for r in self.failed]
        if failed > len(self.failed):
            lines.append(f"... and {failed - len(self.failed)} more failed input(s) (see their error column)")
        return "\n".join(lines)
