"""Student training throughput: teacher-logit cache vs online teacher, side by side in one run.

    python benchmarks/bench_cache.py                       # digits (1x8x8) and CIFAR-sized (3x32x32)
    python benchmarks/bench_cache.py --sizes digits --steps 20 --rounds 3

A cache can at best remove the teacher's forward pass from each step, so

    ideal   = (student step + teacher forward) / student step     (both timed here)
    measured = online step / cached step                           (same student, same batches)

and the cache is doing its job when measured / ideal is close to 1 (target >= 90%). Steps follow
the engine's inner loop exactly: loader batch (augmentation; cached views and logits), student
forward, distillation objective, backward, optimizer step. The three timings are interleaved in
rounds so that a busy machine slows them alike. Untrained models; digits are the bundled data,
the CIFAR size uses random images (nothing is downloaded). Cached logit values are random: they do
not change the cost of a step.
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch

from moskd.data import DataBundle, ImageSet, load_data
from moskd.views import AugSpec
from moskd.loader import make_loader
from moskd.models import create_model
from moskd.profile import count_macs
from students.cache import choose_views
from students.losses import cached_objective, online_objective
from students.train import resolve_arch


def bundle(size: str, n: int) -> DataBundle:
    if size == "digits":
        return load_data("digits")
    g = torch.Generator().manual_seed(0)  # CIFAR-sized random images, CIFAR's augmentation
    images = ImageSet(images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      targets=torch.randint(0, 10, (n,), generator=g), index=torch.arange(n))
    return DataBundle("random 3x32x32", [str(c) for c in range(10)], {s: images for s in ("train", "select", "test")},
                      AugSpec(pad=4, flip=True), [0.5] * 3, [0.25] * 3)


def batches(loader):
    """Endless batches, a new epoch (shuffle and views) each pass, as the engine draws them."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def time_steps(model, optimizer, stream, objective, steps: int) -> float:
    """Seconds of `steps` training steps (loading the batch included, as in moskd.engine.fit)."""
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = next(stream)
        loss = objective(model(batch[0]).float(), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


@torch.inference_mode()
def time_teacher(teacher, stream, steps: int) -> float:
    """Seconds of `steps` teacher forward passes alone (batches fetched outside the clock)."""
    xs = [next(stream)[0] for _ in range(steps)]
    t0 = time.perf_counter()
    for x in xs:
        teacher(x)
    return time.perf_counter() - t0


def bench(size: str, args) -> dict:
    data = bundle(size, args.images)
    batch = args.batch_size or (64 if size == "digits" else 32)
    torch.manual_seed(0)
    student = create_model(resolve_arch(args.student), data.num_classes, data.in_chans)
    teacher = create_model(args.teacher, data.num_classes, data.in_chans).eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    n = len(data.splits["train"])
    views = choose_views(n, args.k, data.aug, seed=0)
    logits = torch.randn(n, views.shape[1], data.num_classes).to(torch.float16)

    cached = batches(make_loader(data, "train", batch, train=True, views=(views, logits)))
    online = batches(make_loader(data, "train", batch, train=True))
    kd = dict(alpha=0.5, temperature=4.0, kd_loss="kl")
    cached_obj, online_obj = cached_objective(**kd), online_objective(teacher, **kd)

    # warm-up: allocator, oneDNN primitive caches
    time_steps(student, optimizer, cached, cached_obj, 1)
    time_steps(student, optimizer, online, online_obj, 1)
    time_teacher(teacher, online, 1)
    t = {"cached": 0.0, "online": 0.0, "teacher": 0.0}
    for _ in range(args.rounds):
        t["cached"] += time_steps(student, optimizer, cached, cached_obj, args.steps)
        t["online"] += time_steps(student, optimizer, online, online_obj, args.steps)
        t["teacher"] += time_teacher(teacher, online, args.steps)
    per_step = {k: v / (args.rounds * args.steps) for k, v in t.items()}
    measured = per_step["online"] / per_step["cached"]
    ideal = (per_step["cached"] + per_step["teacher"]) / per_step["cached"]
    return {"size": size, "input": "x".join(map(str, data.input_size)), "batch": batch, **per_step,
            "measured": measured, "ideal": ideal, "of_ideal": measured / ideal,
            "student_macs": count_macs(student, data.input_size), "teacher_macs": count_macs(teacher, data.input_size)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--sizes", nargs="+", default=["digits", "cifar"], choices=["digits", "cifar"],
                   help="input sizes: digits = 1x8x8 (bundled data), cifar = 3x32x32 (random images)")
    p.add_argument("--student", default="1", help="student: 1 = densenet121, 2 = googlenet, or an arch name")
    p.add_argument("--teacher", default="resnet50", help="teacher architecture")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default: 64 digits, 32 cifar)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three measurements")
    p.add_argument("--k", type=int, default=10, help="cached views per image (--teacher-cache)")
    p.add_argument("--images", type=int, default=512, help="random images at the CIFAR size")
    args = p.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; student {resolve_arch(args.student)}, "
          f"teacher {args.teacher}; {args.rounds} rounds x {args.steps} steps per measurement")
    rows = [bench(size, args) for size in args.sizes]
    head = ("| input | batch | student step, cached (ms) | online step (ms) | teacher fwd (ms) | "
            "measured speed-up | ideal speed-up | measured / ideal |")
    print("\n" + head + "\n|" + "---|" * 8)
    for r in rows:
        print(f"| {r['input']} | {r['batch']} | {1e3 * r['cached']:.0f} | {1e3 * r['online']:.0f} | "
              f"{1e3 * r['teacher']:.0f} | {r['measured']:.2f}x | {r['ideal']:.2f}x | {100 * r['of_ideal']:.0f}% |")
    print("\nMACs per image: " + "; ".join(
        f"{r['input']}: student {r['student_macs'] / 1e6:.0f}M, teacher {r['teacher_macs'] / 1e6:.0f}M" for r in rows))


if __name__ == "__main__":
    main()
