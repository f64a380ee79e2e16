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
