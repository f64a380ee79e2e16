"""CPU inference speed-ups, side by side in one run: Conv+BN folding, channels_last, torch.compile.

    python benchmarks/bench_infer.py [--rounds 7] [--threads N] [--batches 1 64] [--compile] [--onnx] [--int8]
                                     [--size 1x8x8] [--cheap-share 1.0] [--stem cifar] [--selector-width 32]

--stem and --selector-width pick the architectures a recipe trains: the defaults are the digits
recipe's; configs/fashion-mnist-cpu.yaml is `--size 1x28x28 --stem imagenet --selector-width 10`.

For each model (teacher ResNet50, DenseNet121, GoogLeNet, the selector) and for the routed system
(selector -> per-route sub-batches -> scatter back, inference.router.Router with a fixed route mix:
--cheap-share of the images to GoogLeNet, the rest to DenseNet121; 1.0 is the digits run's operating
point, where the selector sends every image to GoogLeNet), at batch 1 and 64, every variant of the
fast path (moskd.fold.FastPath) is timed in the same rounds, in a fresh shuffled order each round:

  eager            today's path: the model as trained, eval mode
  fold             Conv+BN pairs folded into the convolutions
  cl, fold+cl      channels_last weights and input
  +compile         torch.compile (inductor) of the above (--compile; minutes of compile time)
  ort              the folded model exported to ONNX and run by onnxruntime (--onnx), as a bundle does
  ort-int8         that ONNX model with static int8 quantization (--int8; QDQ, per-channel weights, uint8
                   activations, MinMax calibration on random inputs: speed, not accuracy)

Untrained weights (speed does not depend on them). Printed: median milliseconds per batch, each variant's speed-up over eager, and the
routed system's speed-up over the teacher against its MAC ratio (goal: >= 0.8x the MAC ratio at
batch 64; each model's best variant >= 1.3x eager).
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_router's fixed route mix
from bench_router import fixed_logits, fixed_mix_router  # noqa: E402

from moskd.fold import FastPath, fast_model, prepare_input  # noqa: E402
from moskd.models import STEMS, create_model, stem_kwargs  # noqa: E402
from moskd.profile import count_macs  # noqa: E402
from moskd.selector_net import SelectorCNN  # noqa: E402

MODELS = ("teacher", "densenet121", "googlenet", "selector", "routed")


class OrtModel(nn.Module):
    """A folded model exported to ONNX and run by onnxruntime on torch tensors (an nn.Module, so
    the real Router can dispatch to it)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int, int8: bool = False):
        import contextlib
        import tempfile

        from moskd.ort import ort_session

        super().__init__()
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        with contextlib.redirect_stdout(io.StringIO()):
            prog = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
        proto = prog.model_proto.SerializeToString()
        if int8:  # static QDQ int8 as moskd export --quantize int8 writes it (U8 activations, MinMax)
            from inference.quantize import quantize_file

            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "m.onnx").write_bytes(proto)
                calib = torch.randn(64, *example.shape[1:], generator=torch.Generator().manual_seed(0)).numpy()
                proto = quantize_file(Path(d) / "m.onnx", Path(d) / "q.onnx", calib).read_bytes()
        self.session = ort_session(proto, threads)  # as a bundle runs it
        self.name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.name: x.numpy()})[0])


def build(size, share: float, batch: int, stem: str = "cifar", selector_width: int = 32):
    torch.manual_seed(0)
    c = size[0]
    arch = {"teacher": "resnet50", "densenet121": "densenet121", "googlenet": "googlenet"}
    raw = {k: create_model(a, 10, c, **stem_kwargs(a, stem)) for k, a in arch.items()}
    raw["selector"] = SelectorCNN(2, c, width=selector_width)
    raw = {k: m.eval() for k, m in raw.items()}
    macs = {k: count_macs(m, size) for k, m in raw.items()}
    k = round(share * batch)
    macs["routed"] = macs["selector"] + (k * macs["googlenet"] + (batch - k) * macs["densenet121"]) / batch
    return raw, macs


def variants_for(raw: dict, example: torch.Tensor, batch: int, share: float, paths: list, onnx: bool, threads: int,
                 wanted=MODELS, int8: bool = False):
    """{model: {variant name: callable on a contiguous fp32 batch}}."""
    need = set(wanted) | ({"selector", "googlenet", "densenet121"} if "routed" in wanted else set())
    raw = {k: m for k, m in raw.items() if k in need}
    out = {k: {} for k in MODELS}
    mix = fixed_logits(batch, share)
    for path in paths:
        fast = {k: fast_model(m, example, path) for k, m in raw.items()}
        for k, m in fast.items():
            out[k][str(path)] = (lambda m, p: lambda x: m(prepare_input(x, p)))(m, path)
        if "routed" in wanted:
            router = fixed_mix_router(fast["selector"], mix, fast["googlenet"], fast["densenet121"])
            out["routed"][str(path)] = (lambda r, p: lambda x: r(prepare_input(x, p)))(router, path)
    if onnx:
        folded = {k: fast_model(m, example, FastPath()) for k, m in raw.items()}
        ort = {k: OrtModel(m, example, threads) for k, m in folded.items()}
        for k, m in ort.items():
            out[k]["ort"] = m
        if "routed" in wanted:
            out["routed"]["ort"] = fixed_mix_router(ort["selector"], mix, ort["googlenet"], ort["densenet121"])
    if int8:
        folded = {k: fast_model(m, example, FastPath()) for k, m in raw.items()}
        q = {k: OrtModel(m, example, threads, int8=True) for k, m in folded.items()}
        for k, m in q.items():
            out[k]["ort-int8"] = m
        if "routed" in wanted:
            out["routed"]["ort-int8"] = fixed_mix_router(q["selector"], mix, q["googlenet"], q["densenet121"])
    return out


def time_variants(fns: dict, x: torch.Tensor, rounds: int, inner: int, seed: int) -> dict:
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm-up: allocator, oneDNN primitive caches, compiled graphs
            fn(x)
            fn(x)
        order, rng = list(fns), random.Random(seed)
        for _ in range(rounds):
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                for _ in range(inner):
                    fns[k](x)
                times[k].append((time.perf_counter() - t0) / inner)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per variant (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--size", default="1x8x8", help="input size CxHxW (digits: 1x8x8)")
    p.add_argument("--cheap-share", type=float, default=1.0, help="share of images routed to GoogLeNet")
    p.add_argument("--stem", default="cifar", choices=list(STEMS), help="the models' stem (moskd.models)")
    p.add_argument("--selector-width", type=int, default=32, help="the selector's width (a recipe's selector.width)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow to compile)")
    p.add_argument("--onnx", action="store_true", help="also time onnxruntime on the folded models")
    p.add_argument("--int8", action="store_true",
                   help="also time onnxruntime on static int8 (QDQ, per-channel) models, as --quantize int8 exports")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.lower().split("x"))
    paths = [FastPath.parse(s) for s in ("eager", "fold", "cl", "fold+cl")]
    if a.compile:
        paths += [FastPath.parse(s) for s in ("fold+compile", "fold+cl+compile")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {a.size}, {a.stem} stem, "
          f"selector width {a.selector_width}, route mix "
          f"{a.cheap_share:.0%} googlenet / {1 - a.cheap_share:.0%} densenet121, {a.rounds} rounds")
    summary = {}
    for batch in a.batches:
        raw, macs = build(size, a.cheap_share, batch, a.stem, a.selector_width)
        if batch == a.batches[0]:
            print("MACs per image: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in macs.items()))
        x = torch.randn(batch, *size)
        example = torch.randn(2, *size)  # batch 2: a batch-1 example would specialise exported programs to 1
        fns = variants_for(raw, example, batch, a.cheap_share, paths, a.onnx, torch.get_num_threads(), a.models,
                          a.int8)
        inner = max(1, 64 // batch) * 2  # batch 1: several calls per timing, above the timer's noise
        print(f"\nbatch {batch}: median ms per batch (speed-up over eager)")
        names = list(fns[a.models[0]])
        print(f"  {'model':<12}" + "".join(f"{n:>22}" for n in names))
        for k in a.models:
            med = {n: statistics.median(t) * 1000 for n, t in time_variants(fns[k], x, a.rounds, inner, batch).items()}
            summary[(k, batch)] = med
            print(f"  {k:<12}" + "".join(f"{med[n]:>12.2f} ({med['eager'] / med[n]:4.2f}x)" for n in names), flush=True)
        if "routed" in a.models and "teacher" in a.models:
            ratio = macs["teacher"] / macs["routed"]
            print(f"  routed vs teacher: MAC ratio {ratio:.2f}x; wall-clock speed-up per variant "
                  f"(goal at batch 64: >= {0.8 * ratio:.2f}x = 0.8 x MAC ratio)")
            for n in names:
                s = summary[("teacher", batch)][n] / summary[("routed", batch)][n]
                print(f"    {n:<18} {s:5.2f}x  = {s / ratio:4.2f} x MAC ratio")
            best_t, best_r = min(summary[("teacher", batch)].values()), min(summary[("routed", batch)].values())
            print(f"    {'best vs best':<18} {best_t / best_r:5.2f}x  = {best_t / best_r / ratio:4.2f} x MAC ratio")
    print("\nbest variant per model and batch (goal: >= 1.3x eager)")
    for (k, batch), med in summary.items():
        best = min(med, key=med.get)
        print(f"  {k:<12} batch {batch:<3} {best:<18} {med['eager'] / med[best]:4.2f}x")


if __name__ == "__main__":
    main()
