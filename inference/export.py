"""`moskd export`: a finished run as a deployment bundle (DESIGN.md, "Deployment bundle").

It lives in the inference stage, not in moskd, because it exports the stage-4 router (moskd
imports no stage).

    moskd export --run-dir RUN --out DIR [--format torch|onnx] [--escalate TAU] [--fast fold|eager]

Writes DIR/manifest.json (class names, input size, mean/std, each model's file, MACs and
parameters, the routing rule and its operating point) and one file per model: the selector (with
its sigmoid, so it answers scores in [0, 1]), each student in route order (ascending MACs), and
the teacher when --escalate is set. Each model is exported on its own with a dynamic batch size,
as a `torch.export` program (`.pt2`, torch.export.save) or as ONNX (`.onnx`, the dynamo-based
torch.onnx exporter); the routing stays in inference/bundle.py, a small host runtime that reads
the manifest. Models get the selector card's normalisation baked in (as the run's router does) and
their Conv+BN pairs folded (--fast fold, the default); each exported program is checked against
the eager model on a random batch before the manifest is written, and the largest difference is
recorded in the manifest. The manifest is written last, so a half-written bundle never loads.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from inference.bundle import FORMAT_VERSION, MANIFEST, TEACHER
from inference.router import load_router  # the stage-4 loader: card checks, route order, adapters
from moskd.atomic import write_json
from moskd.config import Parser  # one-line errors, 'did you mean', values checked by name
from moskd.errors import MoskdError, cli_entry
from moskd.fold import FastPath, fast_model
from moskd.models import unwrap
from moskd.profile import count_macs, count_params

PROG = "moskd export"
ROUTING_RULE = ("scores = selector (sigmoid, students in route order); each is charged knob x costs (MACs "
                "relative to the dearest student); the best charged score wins; students within tie_margin of "
                "the best tie and the first (cheapest) of them answers; with escalate set, an image whose best "
                "(uncharged) score is below it goes to the teacher")
CHECK_ATOL = 1e-4


class Scores(nn.Module):
    """The selector as the router uses it: sigmoid of its logits, P(student right)."""

    def __init__(self, selector: nn.Module):
        super().__init__()
        self.selector = selector

    def forward(self, x):
        return self.selector(x).float().sigmoid()


def parse_args(argv) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, help="finished run (selector/, students/, teacher/)")
    p.add_argument("--out", required=True, help="bundle folder to write (must be empty or absent, or pass --force)")
    p.add_argument("--format", choices=["torch", "onnx"], default="torch",
                   help="torch.export programs (.pt2) or ONNX (.onnx, needs onnx and onnxscript)")
    p.add_argument("--escalate", type=float, default=None, metavar="TAU",
                   help="operating point: images whose best student score < TAU go to the teacher (bundled)")
    p.add_argument("--fast", default="fold", choices=["fold", "eager"],
                   help="fold Conv+BN pairs into the exported programs (a model whose folded outputs differ by "
                        "more than 1e-4 of the output scale is exported unfolded)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle in --out")
    return p.parse_args(argv)


def _export_torch(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency; fail with the fix, not a traceback)
    except ImportError:
        raise MoskdError("--format onnx needs onnx and onnxscript: pip install -e '.[onnx]'") from None
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                          input_names=["x"], output_names=["y"], external_data=False, verbose=False)


def _check(path: Path, fmt: str, model: nn.Module, x: torch.Tensor) -> float:
    """Largest |exported - eager| on `x`: the exported file is what the bundle will run."""
    with torch.inference_mode():
        want = model(x).float()
    if fmt == "torch":
        with torch.inference_mode():
            got = torch.export.load(str(path)).module()(x).float()
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    return float((want - got).abs().max())


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "torch", escalate: float | None = None,
               fast: str = "fold", force: bool = False, log=print) -> dict:
    """Write the bundle; returns the manifest."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise MoskdError(f"{out} already exists and is not empty; pass --force to replace it or choose another --out")
    run = load_router(run_dir, escalate, "cpu")
    card = run.card
    size = list(card["input_size"])
    example = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
    check = torch.randn(5, *size, generator=torch.Generator().manual_seed(1))
    path = FastPath.parse(fast)
    entries: list[tuple[str, nn.Module, dict]] = [
        ("selector", Scores(run.router.selector), {"arch": run.selector_card["arch"], "macs": count_macs(
            run.router.selector, size), "params": count_params(run.router.selector)})]
    for s, model in zip(run.students, run.router.students):
        entries.append((s.name, model, {"name": s.name, "arch": s.card["arch"], "macs": int(s.macs),
                                        "params": count_params(unwrap(s.model))}))
    if run.router.teacher is not None:
        t = run.router.teacher
        entries.append((TEACHER, t, {"name": TEACHER, "arch": run.teacher_card["arch"],
                                     "macs": count_macs(unwrap(t), size), "params": count_params(unwrap(t))}))

    suffix = ".pt2" if fmt == "torch" else ".onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        done = {}
        for name, model, meta in entries:
            model = fast_model(model.eval(), example, path)
            file = f"{name}{suffix}"
            log(f"export: {name} -> {out / file}")
            (_export_torch if fmt == "torch" else _export_onnx)(model, example, tmp / file)
            diff = _check(tmp / file, fmt, model, check)
            if diff > CHECK_ATOL:
                raise MoskdError(f"{name}: the exported program differs from the model by {diff:.2e} "
                                 f"(> {CHECK_ATOL}); try --fast eager or the other --format")
            done[name] = {**meta, "file": file, "bytes": (tmp / file).stat().st_size, "max_abs_diff": diff}
        manifest = {
            "format_version": FORMAT_VERSION, "format": fmt, "dataset": card["dataset"],
            "class_names": run.class_names, "input_size": size,
            "mean": list(card["mean"]), "std": list(card["std"]),
            "selector": done["selector"], "students": [done[s.name] for s in run.students],
            "teacher": done.get(TEACHER),
            "routing": {"rule": ROUTING_RULE, "tie_margin": run.router.tie_margin, "knob": run.router.knob,
                        "costs": run.router.costs.tolist(), "escalate": escalate},
            "fast_path": str(path),
            "source": {"run_dir": str(run_dir.resolve()), "torch": torch.__version__},
        }
        write_json(tmp / MANIFEST, manifest)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@cli_entry(PROG)
def main(argv=None):
    a = parse_args(argv)
    m = export_run(a.run_dir, a.out, a.format, a.escalate, a.fast, a.force)
    total = sum(e["bytes"] for e in [m["selector"], *m["students"], *([m["teacher"]] if m["teacher"] else [])])
    print(f"wrote {a.out}/{MANIFEST} and {len(m['students']) + 1 + bool(m['teacher'])} {a.format} programs "
          f"({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    main()
