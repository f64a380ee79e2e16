"""Routed inference throughput, side by side in one run, on the CPU.

    python benchmarks/bench_router.py [--repeats 5] [--threads N] [--sizes 1x8x8 3x32x32]

Batches of 256 images at the digits (1x8x8) and CIFAR (3x32x32) input sizes, untrained models
(speed does not depend on the weights). A fixed 70/30 route mix: 70% of the images to the cheaper
student (GoogLeNet), 30% to DenseNet121. Compared with the routed system (selector -> per-route
sub-batches -> scatter back, the real inference.router.Router):

  teacher  the teacher (ResNet50) alone on every image
  both     the original project's way: selector and both students on every image, then pick
  ideal    selector time + 0.7 x GoogLeNet time + 0.3 x DenseNet121 time, each timed on full
           batches: what routing could cost with zero dispatch overhead and no loss of batch
           efficiency on the smaller sub-batches

Targets: routed >= 2x `both` and >= 0.95x `ideal`. Each variant is timed once per round, in a
shuffled order; ratios are printed from the median and from the best (minimum) time per variant,
and as the median over rounds of each round's own ratio (paired), so background load on a shared
machine hits all variants alike and its effect can be told apart.
On a loaded machine use --threads 1: one thread is slowed in proportion to the load, while
several threads stall at every op waiting for a descheduled sibling.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch import nn

from inference.router import Router
from moskd.policy import router_policy
from moskd.models import create_model
from moskd.profile import count_macs
from moskd.selector_net import SelectorCNN

BATCH = 256
CHEAP_SHARE = 0.7


class FixedMix(nn.Module):
    """The real selector CNN (its cost is paid) whose scores are replaced by a fixed route mix,
    so the benchmark exercises Router.forward end to end with a known 70/30 split."""

    def __init__(self, selector: nn.Module, scores: torch.Tensor):
        super().__init__()
        self.selector, self.fixed = selector, scores

    def forward(self, x):
        self.selector(x)
        return self.fixed[: len(x)]


def fixed_mix_router(selector: nn.Module, scores: torch.Tensor, cheap: nn.Module, dear: nn.Module) -> Router:
    """The real Router running the selector-alone policy on a fixed route mix (knob 0, no tie margin)."""
    policy = router_policy(["googlenet", "densenet121", "teacher"], [1.0, 2.0, 3.0], [0, 1], 0.0, 0.0, 0.0)
    return Router(policy, [cheap, dear, None], FixedMix(selector, scores), num_students=2)


def fixed_logits(n: int, cheap_share: float, seed: int = 0) -> torch.Tensor:
    """Selector logits routing round(cheap_share * n) images (at random positions) to student 0."""
    k = round(cheap_share * n)
    to_cheap = torch.zeros(n, dtype=torch.bool)
    to_cheap[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]] = True
    logits = torch.full((n, 2), -4.0)
    logits[to_cheap, 0] = 4.0
    logits[~to_cheap, 1] = 4.0
    return logits


def timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def bench_size(size: tuple[int, int, int], repeats: int, num_classes: int = 10) -> dict:
    torch.manual_seed(0)
    c = size[0]
    teacher = create_model("resnet50", num_classes, c).eval()
    cheap = create_model("googlenet", num_classes, c).eval()
    dear = create_model("densenet121", num_classes, c).eval()
    sel = SelectorCNN(2, c).eval()
    x = torch.randn(BATCH, *size)
    router = fixed_mix_router(sel, fixed_logits(BATCH, CHEAP_SHARE), cheap, dear)
    routes = router(x).routes
    share = (routes == 0).float().mean().item()

    def both(x):  # original project: selector + every student on every image, then pick per image
        pick = sel(x).argmax(1)
        out = torch.stack([cheap(x), dear(x)], 1)
        return out[torch.arange(len(x)), pick]

    variants = {"routed": router, "teacher": teacher, "both": both, "selector": sel, "googlenet": cheap,
                "densenet121": dear}
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up: allocator, oneDNN primitive caches
            fn(x)
        order = list(variants)
        rng = random.Random(0)
        for _ in range(repeats):
            rng.shuffle(order)  # a fresh order each round: no variant always follows the heaviest one
            for k in order:
                times[k].append(timed(variants[k], x))
    # paired per round: the routed time against the others timed in the same round, so a slow
    # drift of background load cancels out of the ratio
    ideal_rounds = [times["selector"][i] + share * times["googlenet"][i] + (1 - share) * times["densenet121"][i]
                    for i in range(repeats)]
    paired = {k: statistics.median(num[i] / times["routed"][i] for i in range(repeats))
              for k, num in (("teacher", times["teacher"]), ("both", times["both"]), ("ideal", ideal_rounds))}
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by other load on a shared machine
    for t in (med, best):
        t["ideal"] = t["selector"] + share * t["googlenet"] + (1 - share) * t["densenet121"]
    macs = {"selector": count_macs(sel, size), "googlenet": count_macs(cheap, size),
            "densenet121": count_macs(dear, size), "teacher": count_macs(teacher, size)}
    return {"size": size, "share": share, "median_s": med, "best_s": best, "paired": paired, "macs": macs,
            "spread": {k: (min(v), max(v)) for k, v in times.items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--sizes", nargs="+", default=["1x8x8", "3x32x32"], help="input sizes CxHxW")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
          f"route mix {CHEAP_SHARE:.0%} googlenet / {1 - CHEAP_SHARE:.0%} densenet121, {a.repeats} rounds")
    rows = []
    for s in a.sizes:
        size = tuple(int(v) for v in s.lower().split("x"))
        r = bench_size(size, a.repeats)
        m = r["median_s"]
        print(f"\n{s}: median seconds per batch of {BATCH} (min..max over rounds)")
        for k in ("routed", "teacher", "both", "ideal", "selector", "googlenet", "densenet121"):
            lo, hi = r["spread"].get(k, (m[k], m[k]))
            print(f"  {k:<12} {m[k]:8.4f}  ({lo:.4f}..{hi:.4f})  {BATCH / m[k]:9.1f} img/s")
        for stat, t in (("median", m), ("best", r["best_s"])):
            rows.append((s, stat, t["teacher"] / t["routed"], t["both"] / t["routed"], t["ideal"] / t["routed"]))
        p_ = r["paired"]
        rows.append((s, "paired", p_["teacher"], p_["both"], p_["ideal"]))
        mac_ratio = (r["macs"]["selector"] + r["macs"]["googlenet"] + r["macs"]["densenet121"]) / (
            r["macs"]["selector"] + r["share"] * r["macs"]["googlenet"] + (1 - r["share"]) * r["macs"]["densenet121"])
        print(f"  MACs: both / routed = {mac_ratio:.2f}x (what `both` could at best be beaten by)")
    print("\nrouted throughput ratios (higher = routed faster; targets: vs both >= 2.00, vs ideal >= 0.95)")
    print("  median / best: of each variant's times; paired: median over rounds of the per-round ratio")
    print(f"  {'input':<10} {'timing':<7} {'vs teacher':>10} {'vs both':>10} {'vs ideal':>10}")
    for s, stat, t, b, i in rows:
        print(f"  {s:<10} {stat:<7} {t:>9.2f}x {b:>9.2f}x {i:>9.2f}x")


if __name__ == "__main__":
    main()
