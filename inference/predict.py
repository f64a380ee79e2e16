"""Routed predictions for image files and folders: find the inputs, read them as the model card
expects, run a run's router or a deployment bundle behind one interface, and write one row per
input (the inference command; its flags and output columns are in inference.cli).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image  # tests patch Image.open here
from tqdm import tqdm

from inference.bundle import BundleError, BundleOutput, load_bundle
from inference.router import Router, load_router, rebatched
from moskd.profile import count_macs
from inference.files import decode_chunk, decoded_chunks, iter_inputs, nth_input, predict_chunk
from inference.images import preprocess_array
from inference.output import RowSummary, RowWriter, output_format
from moskd.views import normalize
from moskd.errors import MoskdError
from moskd.fold import FastPath, fast_model, prepare_input
from moskd.runtime import setup_runtime

# ---------------------------------------------------------------- reading images


def gather(inputs: list[str]) -> list[tuple[Path, str | None]]:
    """Every input as inference.files.iter_inputs lists it (a list: for small input sets and tests)."""
    return list(iter_inputs(inputs))


def preprocess(im: Image.Image, card: dict, invert: str = "auto") -> torch.Tensor:
    """(C, H, W) uint8 tensor as the model card expects (before normalisation)."""
    return torch.from_numpy(preprocess_array(im, card, invert))


# ---------------------------------------------------------------- predicting and writing


class RunPredictor:
    """A run's router (checkpoints, training code) behind the deployment bundle's interface
    (inference.bundle.Bundle): uint8 batch in, answers, routes, scores and MACs out. Every --fast
    path runs the same routing policy (RUN/policy.json): only the models are swapped for their fast
    versions. pow2_batches: each model runs its sub-batch in power-of-two chunks; max_call: in calls of
    at most that many images (Router)."""

    def __init__(self, run, device="cpu", fast: str = "eager", pow2_batches: bool = False,
                 max_call: int | None = None):

        self.run_models, self.device = run, torch.device(device)
        self.fast = FastPath.parse(fast)
        router = run.router
        self.policy = router.policy
        self.card, self.class_names = run.card, run.class_names
        self.names, self.route_names = router.names, router.route_names
        size = run.card["input_size"]
        self._mean, self._std = (torch.tensor(run.card[k], device=self.device) for k in ("mean", "std"))
        used = set(self.policy.used())  # the models this predictor can run (the teacher only when a step reaches it)
        models = {name: {"name": name, "macs": float(m)} for k, (name, m) in enumerate(zip(self.policy.models,
                                                                                          self.policy.macs)) if k in used}
        for s in run.students:
            if s.name in models:
                models[s.name]["arch"] = s.card["arch"]
        if run.teacher_card is not None and self.route_names[-1] in models:
            models[self.route_names[-1]]["arch"] = run.teacher_card["arch"]
        if router.selector is not None:
            models["selector"] = {"arch": run.selector_card["arch"], "macs": count_macs(router.selector, size)}
        if str(self.fast) != "eager":  # a copy with every model on the fast path (the run's router is untouched)
            example = torch.zeros(2, *size, device=self.device)
            fast = lambda m: fast_model(m, example, self.fast) if m is not None else None  # noqa: E731
            used = self.policy.used()
            router = Router(self.policy, [fast(m) if k in used else None for k, m in enumerate(router.models)],
                            fast(router.selector), router.num_students, router.num_classes, pow2_batches, max_call)
        same = (router.pow2_batches, router.max_call) == (pow2_batches, max_call)
        self.router = router if same else rebatched(router, pow2_batches, max_call)
        self._info = {"format": "run", "dataset": run.card["dataset"], "classes": list(self.class_names),
                      "input_size": list(size), "models": models, "policy": self.policy.to_dict(),
                      "routing": self.policy.describe(), "fast": str(self.fast)}

    def run(self, images: np.ndarray):

        x = normalize(torch.from_numpy(np.asarray(images)).to(self.device), self._mean, self._std)
        out = self.router(prepare_input(x, self.fast))
        return BundleOutput(out.logits.float().cpu().numpy(), out.routes.cpu().numpy(),
                            out.scores.float().cpu().numpy(), out.macs.cpu().numpy(), out.models.cpu().numpy())

    def info(self) -> dict:
        return self._info


def open_bundle(path: str, threads: int | None = None, pow2_batches: bool = False, max_call: int | None = None):
    """inference.bundle.load_bundle with its errors as one MoskdError line."""

    try:
        return load_bundle(path, threads, pow2_batches=pow2_batches, max_call=max_call)
    except BundleError as e:
        raise MoskdError(str(e)) from None


def load_predictor(run_dir: str | None = None, bundle: str | None = None, device="cpu", fast: str = "fold+cl",
                   pow2_batches: bool = False, max_call: int | None = None):
    """The bundle's runtime (no training code) or the run's router, behind one interface.
    pow2_batches: every model runs in power-of-two chunks (moskd.batch_shapes), so a long stream of
    routed batches of every size keeps memory flat; off, each sub-batch runs as one batch. max_call:
    no model runs more than this many images at once."""
    if bundle is not None:
        return open_bundle(bundle, pow2_batches=pow2_batches, max_call=max_call)

    return RunPredictor(load_router(run_dir, device), device, fast, pow2_batches, max_call)


def predict_files(run, files: list[Path], batch_size: int, invert: str, device, on_fail=None) -> list[dict]:
    """One row per file, in input order (inference.output): an unreadable file gets a failed row
    with its error, and on_fail(path, why) when given.

    `run` is a predictor (load_predictor) or a run's RunModels (inference.router.load_router)."""
    if not hasattr(run, "route_names"):
        run = RunPredictor(run, device)
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = decode_chunk([(p, None) for p in files[start:start + batch_size]], run.card, invert)
        rows += predict_chunk(run, chunk)
    for r in rows:
        if r["error"] is not None and on_fail is not None:
            on_fail(Path(r["path"]), r["error"])
    return rows


def _resume_point(writer: RowWriter, inputs: list[str], output: str) -> int:
    """How many inputs an output file already holds rows for; one line when it holds another listing's."""
    if writer.done and str(nth_input(inputs, writer.done - 1)) != writer.last:
        raise MoskdError(f"--resume: {output} holds {writer.done} row(s) ending with {writer.last}, which is not "
                         f"input {writer.done} of these inputs; pass the same inputs, or drop --resume to start over")
    return writer.done


def run(cfg, inputs: list[str], prog: str = "inference") -> int:
    """`inference PATHS...` once its flags are parsed and checked (inference.cli.main): one row per input."""
    fmt = output_format(cfg.output, cfg.output_format)
    rt = setup_runtime(cfg.device)
    # a stream of routed sub-batches of every size: power-of-two chunks keep memory flat in the number of files
    predictor = load_predictor(cfg.run_dir, cfg.bundle, rt.device, cfg.fast, pow2_batches=True)
    if cfg.resume and cfg.output in (None, "-"):
        raise MoskdError("--resume continues an output file; pass --output FILE.csv or FILE.jsonl")
    writer = RowWriter(cfg.output, fmt, predictor.names, cfg.resume)
    try:
        skip = _resume_point(writer, inputs, cfg.output)
        summary, failed = _predict_stream(cfg, predictor, inputs, writer, skip, prog)
    finally:
        writer.close()
    if not cfg.quiet:
        print(summary.text(predictor.names, failed), file=sys.stderr)
        if cfg.output not in (None, "-"):
            resumed = f" after the {skip} already there" if skip else ""
            print(f"wrote {summary.count} row(s) to {cfg.output}{resumed}", file=sys.stderr)
    if failed:
        print(f"{prog}: {failed} of {summary.count} input(s) could not be predicted (see their error); "
              f"the others were predicted", file=sys.stderr)
        raise SystemExit(2)  # bad input (exit codes: 0 ok, 2 bad input, 130 interrupted, 1 internal failure)
    return 0


def _predict_stream(cfg, predictor, inputs: list[str], writer: RowWriter, skip: int, prog: str
                    ) -> tuple[RowSummary, int]:
    """Predict chunk by chunk, writing each chunk's rows before the next; a progress bar on a terminal."""

    summary, failed = RowSummary(), 0
    bar = tqdm(desc="predict", unit="img", leave=False, disable=not sys.stderr.isatty(), initial=skip)
    for chunk in decoded_chunks(inputs, cfg.batch_size, predictor.card, cfg.invert, cfg.workers, skip):
        rows = predict_chunk(predictor, chunk)
        writer.write(rows)
        summary.add(rows)
        for r in rows:
            if r["error"] is not None:
                failed += 1
                if cfg.quiet:  # with the table off, each failure still gets its line on stderr
                    print(f"{prog}: {r['path']}: {r['error']}", file=sys.stderr, flush=True)
        bar.update(len(rows))
    bar.close()
    return summary, failed
