"""inference: routed predictions for image files and folders, or the evaluation report of a run.

    inference --run-dir RUN img.png photos/ [--output preds.jsonl|preds.csv] [--escalate TAU]
    inference --bundle DIR img.png photos/ [--output ...]      (an exported bundle: moskd export)
    inference --run-dir RUN --split test [--dataset NAME]      (writes RUN/report.json, report.md, plots)

Folders are searched recursively for files with an image extension; files named explicitly are
always tried. Preprocessing follows the model card: grayscale, RGB, RGBA and palette images are
converted to the card's channels (transparency is flattened onto white), resized to the training
size and normalised with the card's mean/std. Digits models were trained on bright ink over a
dark background, so for them a light-background image (scanned paper, a drawing) is inverted
first (--invert auto).

An unreadable, truncated or non-image file gets one line on stderr naming it and why; every other
file is still predicted and written, and the exit code is 1.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import numpy as np
from PIL import Image

from inference.images import (  # noqa: F401  (re-exported: tests and callers import them from here)
    BadImage, image_extensions, light_background, preprocess_array, read_image_array, to_model_mode)
from moskd.config import build_parser, check_ranges, field, load_yaml_overrides
from moskd.data import normalize
from moskd.errors import MoskdError, cli_entry
from moskd.fold import FastPath, fast_model, prepare_input
from moskd.runtime import setup_runtime, show_progress

PROG = "inference"
OUTPUT_SUFFIXES = (".jsonl", ".csv")


@dataclass
class InferenceConfig:
    run_dir: str = field("runs/digits", "run directory holding teacher/, students/ and selector/")
    bundle: Optional[str] = field(None, "predict from a deployment bundle (moskd export) instead of --run-dir",
                                  metavar="DIR")
    dataset: Optional[str] = field(None, "evaluate on this dataset (must be the run's; default: the run's)")
    split: Optional[str] = field(None, "evaluate the run on this split and write the report", choices=["test"])
    data_dir: Optional[str] = field(None, "where CIFAR files live (default: the run's)")
    download: bool = field(False, "download CIFAR through torchvision (needs network)")
    limit: Optional[int] = field(None, "evaluate on at most N images of the split")
    escalate: Optional[float] = field(None, "cascade: images whose best student score < TAU go to the teacher "
                                            "(0 = never, >1 = always)", metavar="TAU")
    output: Optional[str] = field(None, "also write per-image predictions to FILE.jsonl or FILE.csv", metavar="FILE")
    batch_size: int = field(256, "images per forward pass")
    fast: str = field("fold+cl", "with --run-dir: CPU fast path, Conv+BN folding and channels_last "
                                 "(measured in benchmarks/bench_infer.py): eager | fold | fold+cl",
                      choices=["eager", "fold", "fold+cl"])
    invert: str = field("auto", "auto (digits: invert light-background images) | yes | no",
                        choices=["auto", "yes", "no"])
    device: str = field("auto", "auto | cpu | cuda | cuda:N")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv) -> tuple[InferenceConfig, list[str]]:
    """Dataclass defaults < --config YAML (section `inference`) < flags; plus positional inputs."""
    parser = build_parser(InferenceConfig, PROG, __doc__)
    parser.formatter_class = _HelpFormatter  # keep the usage examples' line breaks
    parser.add_argument("inputs", nargs="*", metavar="PATH", help="image files and folders (searched recursively)")
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_yaml_overrides(InferenceConfig, pre.config, "inference"))
    args = parser.parse_args(argv)
    cfg = InferenceConfig(**{k: getattr(args, k) for k in InferenceConfig.__dataclass_fields__})
    check_ranges(cfg)
    return cfg, list(args.inputs)


# ---------------------------------------------------------------- finding and reading images


def gather(inputs: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to predict, in a stable order, and (path, why) for inputs that cannot even be listed."""
    exts = image_extensions()
    files, failed = [], []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = []

            def unreadable(err: OSError, root=p):
                failed.append((Path(err.filename or root), f"cannot list folder ({err.strerror or err})"))

            for d, dirs, names in os.walk(p, onerror=unreadable):
                dirs.sort()
                found += [Path(d) / n for n in sorted(names) if Path(n).suffix.lower() in exts]
            if not found and not any(str(f).startswith(str(p)) for f, _ in failed):
                failed.append((p, f"no image files found (looked for {', '.join(sorted(exts)[:6])}, ...)"))
            files += found
        else:
            files.append(p)  # named explicitly: always tried, so a bad one is reported, not skipped
    return files, failed


def preprocess(im: Image.Image, card: dict, invert: str = "auto") -> torch.Tensor:
    """(C, H, W) uint8 tensor as the model card expects (before normalisation)."""
    return torch.from_numpy(preprocess_array(im, card, invert))


def read_image(path: Path, card: dict, invert: str = "auto") -> torch.Tensor:
    return torch.from_numpy(read_image_array(path, card, invert))


# ---------------------------------------------------------------- predicting and writing


class RunPredictor:
    """A run's router (checkpoints, training code) behind the deployment bundle's interface
    (inference.bundle.Bundle): uint8 batch in, logits, routes, scores and MACs out."""

    def __init__(self, run, device="cpu", fast: str = "eager"):
        from inference.router import TEACHER
        from moskd.profile import count_macs

        self.run_models, self.device = run, torch.device(device)
        self.fast = FastPath.parse(fast)
        router = run.router
        self.card, self.class_names = run.card, run.class_names
        self.names, self.route_names = router.names, router.route_names
        self.tie_margin, self.escalate = router.tie_margin, router.escalate
        size = run.card["input_size"]
        self.selector_macs = count_macs(router.selector, size)
        teacher_macs = count_macs(router.teacher, size) if router.teacher is not None else 0
        self.route_macs = np.array([s.macs for s in run.students] + [teacher_macs], dtype=np.int64)
        self._mean, self._std = (torch.tensor(run.card[k], device=self.device) for k in ("mean", "std"))
        models = {"selector": {"arch": run.selector_card["arch"], "macs": self.selector_macs}}
        models.update({s.name: {"name": s.name, "arch": s.card["arch"], "macs": int(s.macs)} for s in run.students})
        if router.teacher is not None:
            models[TEACHER] = {"name": TEACHER, "arch": run.teacher_card["arch"], "macs": teacher_macs}
        self.router = self._fast_router(router) if str(self.fast) != "eager" else router
        self._info = {"format": "run", "dataset": run.card["dataset"], "classes": list(self.class_names),
                      "input_size": list(size), "models": models,
                      "routing": {"tie_margin": self.tie_margin, "escalate": self.escalate}}

    def run(self, images: np.ndarray):
        from inference.bundle import BundleOutput

        x = normalize(torch.from_numpy(np.asarray(images)).to(self.device), self._mean, self._std)
        out = self.router(prepare_input(x, self.fast))
        routes = out.routes.cpu().numpy()
        return BundleOutput(out.logits.float().cpu().numpy(), routes, out.scores.float().cpu().numpy(),
                            self.selector_macs + self.route_macs[routes])

    def info(self) -> dict:
        return self._info

    def _fast_router(self, router):
        """A copy of the router with every model on the fast path (the run's router is untouched)."""
        from inference.router import Router

        example = torch.zeros(2, *self.card["input_size"], device=self.device)
        fast = lambda m: fast_model(m, example, self.fast) if m is not None else None  # noqa: E731
        return Router(fast(router.selector), [fast(m) for m in router.students], fast(router.teacher),
                      router.escalate, router.tie_margin, router.names)


def open_bundle(path: str, escalate: float | None = None, threads: int | None = None):
    """inference.bundle.load_bundle with its errors as one MoskdError line."""
    from inference.bundle import BundleError, load_bundle

    if escalate is not None:
        raise MoskdError("--escalate is fixed when the bundle is exported (moskd export --escalate TAU)")
    try:
        return load_bundle(path, threads)
    except BundleError as e:
        raise MoskdError(str(e)) from None


def load_predictor(run_dir: str | None = None, bundle: str | None = None, escalate: float | None = None,
                   device="cpu", fast: str = "fold+cl"):
    """The bundle's runtime (no training code) or the run's router, behind one interface."""
    if bundle is not None:
        return open_bundle(bundle, escalate)
    from inference.router import load_router

    return RunPredictor(load_router(run_dir, escalate, device), device, fast)


def predict_files(run, files: list[Path], batch_size: int, invert: str, device, on_fail) -> list[dict]:
    """Rows for every readable file, in input order; on_fail(path, why) for each unreadable one.

    `run` is a predictor (load_predictor) or a run's RunModels (inference.router.load_router)."""
    from tqdm import tqdm

    from inference.bundle import softmax

    if not hasattr(run, "route_names"):
        run = RunPredictor(run, device)
    card, classes = run.card, run.class_names
    rows = []
    starts = range(0, len(files), batch_size)
    for start in tqdm(starts, desc="predict", leave=False, disable=not sys.stderr.isatty(), unit="batch"):
        ok, xs = [], []
        for p in files[start : start + batch_size]:
            try:
                xs.append(read_image_array(p, card, invert))
                ok.append(p)
            except BadImage as e:
                on_fail(p, str(e))
        if not xs:
            continue
        out = run.run(np.stack(xs))
        probs = softmax(out.logits.astype(np.float64))
        cls, conf = probs.argmax(1), probs.max(1)
        for i, p in enumerate(ok):
            rows.append({
                "path": str(p), "class_index": int(cls[i]), "class_name": classes[int(cls[i])],
                "probability": float(conf[i]), "student": run.route_names[int(out.routes[i])],
                "scores": {n: float(s) for n, s in zip(run.names, out.scores[i].tolist())},
            })
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no predictions)"
    names = list(rows[0]["scores"])
    head = ["path", "class", "name", "prob", "student", *[f"score:{n}" for n in names]]
    body = [[r["path"], str(r["class_index"]), r["class_name"], f"{r['probability']:.4f}", r["student"],
             *[f"{r['scores'][n]:.3f}" for n in names]] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])


def write_rows(rows: list[dict], path: Path, score_names: list[str]) -> None:
    """Write .jsonl or .csv atomically (a temporary file, then rename)."""
    buf = io.StringIO()
    if path.suffix.lower() == ".jsonl":
        buf.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "class_index", "class_name", "probability", "student",
                    *[f"score_{n}" for n in score_names]])
        for r in rows:
            w.writerow([r["path"], r["class_index"], r["class_name"], f"{r['probability']:.6f}", r["student"],
                        *[f"{r['scores'][n]:.6f}" for n in score_names]])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def check_output(output: str | None) -> Path | None:
    if output is None:
        return None
    p = Path(output)
    if p.suffix.lower() not in OUTPUT_SUFFIXES:
        raise MoskdError(f"--output {output}: use a file name ending in .jsonl or .csv")
    if p.is_dir():
        raise MoskdError(f"--output {output} is a folder; pass a file name ending in .jsonl or .csv")
    return p


@cli_entry(PROG)
def main(argv=None):
    cfg, inputs = parse_args(argv)
    evaluating = cfg.split is not None or cfg.dataset is not None
    if inputs and evaluating:
        raise MoskdError("give image files/folders or --split test (evaluation), not both")
    if not inputs and not evaluating:
        raise MoskdError("nothing to predict; pass image files or folders, or --split test to evaluate the run")
    if evaluating and cfg.bundle is not None:
        raise MoskdError("--split evaluates a run directory; pass --run-dir RUN (a bundle predicts image files)")
    output = check_output(cfg.output)
    rt = setup_runtime(cfg.device)
    if evaluating:
        if output is not None:
            raise MoskdError("--output writes file predictions; the evaluation writes RUN/report.json instead")
        from inference.report import report_run

        report_run(cfg.run_dir, dataset=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                   limit=cfg.limit, escalate=cfg.escalate, device=rt.device, batch_size=cfg.batch_size,
                   progress=show_progress(rt))
        return 0

    run = load_predictor(cfg.run_dir, cfg.bundle, cfg.escalate, rt.device, cfg.fast)
    failed = 0

    def on_fail(path, why):
        nonlocal failed
        failed += 1
        print(f"{PROG}: {path}: {why}", file=sys.stderr, flush=True)

    files, listing_failures = gather(inputs)
    for path, why in listing_failures:
        on_fail(path, why)
    rows = predict_files(run, files, cfg.batch_size, cfg.invert, rt.device, on_fail)
    if output is not None:  # written before the table, so a closed stdout (| head) cannot lose it
        write_rows(rows, output, run.names)
    try:
        print(format_table(rows))
        if output is not None:
            print(f"wrote {len(rows)} prediction(s) to {output}")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (e.g. head) stopped early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if failed:
        print(f"{PROG}: {failed} input(s) could not be predicted (see above); the others were written",
              file=sys.stderr)
        raise SystemExit(1)
    return 0


if __name__ == "__main__":
    main()
