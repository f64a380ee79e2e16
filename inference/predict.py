"""inference: routed predictions for image files and folders, or the evaluation report of a run.

    inference --run-dir RUN img.png photos/ [--output preds.jsonl|preds.csv] [--escalate TAU]
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

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from moskd.config import build_parser, field, load_yaml_overrides
from moskd.data import normalize
from moskd.errors import MoskdError, cli_entry
from moskd.runtime import setup_runtime, show_progress

PROG = "inference"
OUTPUT_SUFFIXES = (".jsonl", ".csv")


@dataclass
class InferenceConfig:
    run_dir: str = field("runs/digits", "run directory holding teacher/, students/ and selector/")
    dataset: Optional[str] = field(None, "evaluate on this dataset (must be the run's; default: the run's)")
    split: Optional[str] = field(None, "evaluate the run on this split and write the report", choices=["test"])
    data_dir: Optional[str] = field(None, "where CIFAR files live (default: the run's)")
    download: bool = field(False, "download CIFAR through torchvision (needs network)")
    limit: Optional[int] = field(None, "evaluate on at most N images of the split")
    escalate: Optional[float] = field(None, "cascade: images whose best student score < TAU go to the teacher "
                                            "(0 = never, >1 = always)", metavar="TAU")
    output: Optional[str] = field(None, "also write per-image predictions to FILE.jsonl or FILE.csv", metavar="FILE")
    batch_size: int = field(256, "images per forward pass")
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
    return cfg, list(args.inputs)


# ---------------------------------------------------------------- finding and reading images


class BadImage(Exception):
    """A file that cannot be predicted; the message says why."""


def image_extensions() -> set[str]:
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


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


def _describe(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return first[:160]


def _to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale to 8 bits by scaling (PIL's convert would clip at 255)."""
    a = np.asarray(im, dtype=np.float64)
    peak = a.max() if a.size else 0.0
    scale = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return Image.fromarray(np.clip(np.round(a * (255.0 / scale)), 0, 255).astype(np.uint8), "L")


def to_model_mode(im: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL mode to 'L' (1 channel) or 'RGB' (3 channels)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # resolve the palette (and its transparent index)
    if "A" in im.getbands() or "a" in im.getbands():
        # flatten transparency onto white, as it would show on paper or a page
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    if in_chans == 1:
        return im.convert("L")
    if in_chans == 3:
        return im.convert("RGB")
    raise MoskdError(f"models taking {in_chans} channels are not supported by inference; use 1 or 3")


def light_background(a: np.ndarray) -> bool:
    """True when the image's outer ring of pixels is mostly bright (ink on paper)."""
    if min(a.shape[-2:]) < 3:
        return False
    ring = np.concatenate([a[..., 0, :].ravel(), a[..., -1, :].ravel(), a[..., :, 0].ravel(), a[..., :, -1].ravel()])
    return float(np.median(ring)) > 127


def preprocess(im: Image.Image, card: dict, invert: str = "auto") -> torch.Tensor:
    """(C, H, W) uint8 tensor as the model card expects (before normalisation)."""
    c, h, w = card["input_size"]
    im = to_model_mode(im, c)
    if im.size != (w, h):
        # area averaging when shrinking (how digits' 8x8 images were made); bilinear when enlarging
        shrink = im.width >= w and im.height >= h
        im = im.resize((w, h), Image.BOX if shrink else Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    digits = card.get("dataset") == "digits"
    if invert == "yes" or (invert == "auto" and digits and light_background(a)):
        a = 255 - a  # digits have bright ink on a dark background
    return torch.from_numpy(a.copy())  # owns its memory (PIL-backed arrays are read-only)


def read_image(path: Path, card: dict, invert: str = "auto") -> torch.Tensor:
    try:
        if path.is_dir():
            raise BadImage("is a folder inside a file list")
        if path.stat().st_size == 0:
            raise BadImage("empty file")
        with Image.open(path) as im:
            im.load()  # decode now: truncated data fails here, with the file named
            return preprocess(im, card, invert)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format)") from None
    except FileNotFoundError:
        raise BadImage("no such file (or a broken link)") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely ({_describe(e)})") from None
    except OSError as e:
        raise BadImage(f"truncated or corrupt image ({_describe(e)})") from None
    except Exception as e:  # noqa: BLE001  any decoder failure means this one file is unusable
        raise BadImage(f"could not decode ({type(e).__name__}: {_describe(e)})") from None


# ---------------------------------------------------------------- predicting and writing


def predict_files(run, files: list[Path], batch_size: int, invert: str, device, on_fail) -> list[dict]:
    """Rows for every readable file, in input order; on_fail(path, why) for each unreadable one."""
    from tqdm import tqdm

    card, router = run.card, run.router
    mean, std = (torch.tensor(card[k], device=device) for k in ("mean", "std"))
    classes = run.class_names
    rows = []
    starts = range(0, len(files), batch_size)
    for start in tqdm(starts, desc="predict", leave=False, disable=not sys.stderr.isatty(), unit="batch"):
        ok, xs = [], []
        for p in files[start : start + batch_size]:
            try:
                xs.append(read_image(p, card, invert))
                ok.append(p)
            except BadImage as e:
                on_fail(p, str(e))
        if not xs:
            continue
        out = router(normalize(torch.stack(xs).to(device), mean, std))
        probs = out.logits.float().softmax(1)
        conf, cls = probs.max(1)
        for i, p in enumerate(ok):
            rows.append({
                "path": str(p), "class_index": int(cls[i]), "class_name": classes[int(cls[i])],
                "probability": float(conf[i]), "student": router.route_names[int(out.routes[i])],
                "scores": {n: float(s) for n, s in zip(router.names, out.scores[i].tolist())},
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

    from inference.router import load_router

    run = load_router(cfg.run_dir, cfg.escalate, rt.device)
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
        write_rows(rows, output, run.router.names)
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
