"""Training throughput under each precision/layout policy, side by side in one run.

    python benchmarks/bench_precision.py [--size 1x28x28] [--batch 128] [--rounds 5] [--stem imagenet]
        [--archs resnet50 densenet121 googlenet] [--variants fp32 fp32+cl bf16+cl] [--compile]

For the teacher (ResNet50) and both students (DenseNet121, GoogLeNet) one full training step
(forward, cross-entropy, backward, AdamW step) is timed under:

  fp32            the default layout, no autocast
  fp32+cl         channels_last weights and input
  bf16+cl         channels_last and bf16 autocast: what moskd.precision.choose_precision picks for training
                  on CPUs with native bf16 (AVX512-BF16 or AMX)
  fp32+cl+compile with --compile: fp32+cl under torch.compile (the training engines' --compile); its
                  compilation happens in the warm-up steps and is not timed

Variants are interleaved, in a fresh shuffled order each round, after two warm-up steps each, so
machine noise falls on all of them alike. Printed: median images/s per variant and its ratio to
the first variant (fp32 by default). Untrained weights (speed does not depend on them). It says whether this CPU has native bf16.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from moskd.models import create_model, stem_kwargs
from moskd.precision import Precision, cpu_has_native_bf16

VARIANTS = {
    "fp32": Precision(torch.device("cpu"), None, channels_last=False),
    "fp32+cl": Precision(torch.device("cpu"), None, channels_last=True),
    "bf16+cl": Precision(torch.device("cpu"), torch.bfloat16, channels_last=True),
}


def step(model, opt, x, y, prec: Precision) -> None:
    loss = torch.nn.functional.cross_entropy(prec.forward(model, x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1x28x28", help="C x H x W of the input")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--stem", default="imagenet", choices=["cifar", "imagenet"])
    p.add_argument("--archs", nargs="+", default=["resnet50", "densenet121", "googlenet"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="which variants to time; ratios are to the first")
    p.add_argument("--compile", action="store_true", help="add the fp32+cl+compile variant")
    a = p.parse_args()
    variants = {name: VARIANTS[name] for name in a.variants}
    if a.compile:
        variants["fp32+cl+compile"] = VARIANTS["fp32+cl"]
    c, h, w = map(int, a.size.split("x"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {cpu_has_native_bf16()}")
    for arch in a.archs:
        x, y = torch.randn(a.batch, c, h, w), torch.randint(0, 10, (a.batch,))
        setups = {}
        for name, prec in variants.items():
            torch.manual_seed(0)
            model = prec.model(create_model(arch, 10, c, **stem_kwargs(arch, a.stem)).train())
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            if name.endswith("+compile"):
                model = torch.compile(model)
            for _ in range(2):
                step(model, opt, x, y, prec)
            setups[name] = (model, opt, prec)
        times = {name: [] for name in variants}
        for _ in range(a.rounds):
            order = list(variants)
            random.shuffle(order)
            for name in order:
                model, opt, prec = setups[name]
                t0 = time.perf_counter()
                step(model, opt, x, y, prec)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times[a.variants[0]])
        cells = [f"{n} {a.batch / statistics.median(t):6.0f} img/s ({base / statistics.median(t):.2f}x)"
                 for n, t in times.items()]
        print(f"{arch:12s} " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
