"""The device checks benchmarks/gpu_check.sh runs before the pipeline: one small JSON of what works.

    python benchmarks/gpu_smoke.py --out DIR/smoke.json [--device auto] [--no-compile]

Checks, each timed and recorded as ok/failed (with the error's first line), in one process:
- `device`: moskd.runtime.parse_device on auto, cuda, cuda:0 and a refused cuda:99 (on a machine
  without CUDA: auto is the CPU and cuda is refused), and the device's name;
- `precision`: one training step of a small CNN through moskd.precision's training policy (bf16
  autocast + channels_last on CUDA), with the autocast dtype and the weights' layout it saw;
- `compile`: torch.compile of that tiny CNN (what `--compile` does in moskd.engine; --compile-backend
  aot_eager for a quick CPU smoke), three training steps, compile time and the eager/compiled
  logits' largest difference;
- `ddp`: a 1-process process group (NCCL on CUDA, gloo on the CPU), one DDP training step and an
  all_reduce.
Exit status 0 when every check passed, 1 otherwise (the JSON is written either way).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def tiny_cnn(in_chans: int = 1, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes))


def _batch(device: torch.device, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def _step(model: nn.Module, prec, x, y, opt) -> float:
    with prec.autocast():
        loss = nn.functional.cross_entropy(model(prec.input(x)).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def check_device(args) -> dict:
    from moskd.errors import MoskdError
    from moskd.runtime import parse_device

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    seen = {}
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:99"):
        try:
            seen[name] = str(parse_device(name, count))
        except MoskdError as e:
            seen[name] = f"refused: {e}"
    assert seen["auto"] == ("cuda:0" if count else "cpu"), seen
    assert seen["cuda:99"].startswith("refused"), seen
    assert (seen["cuda"] == "cuda:0") if count else seen["cuda"].startswith("refused"), seen
    device = parse_device(args.device, count)
    return {"cuda_devices": count, "parsed": seen, "device": str(device),
            "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None}


def check_precision(device: torch.device) -> dict:
    from moskd.precision import choose_precision

    prec = choose_precision(device, amp=True, training=True)
    model = prec.model(tiny_cnn())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch(device)
    with prec.autocast():
        dtype = str(model(prec.input(x)).dtype)
    losses = [_step(model, prec, x, y, opt) for _ in range(3)]
    conv = model[0].weight
    out = {"policy": prec.name, "autocast_dtype": dtype, "losses": losses,
           "channels_last": conv.is_contiguous(memory_format=torch.channels_last)}
    assert all(map(lambda v: v == v and abs(v) < 1e4, losses)), out  # finite
    if device.type == "cuda":
        assert dtype == "torch.bfloat16" and out["channels_last"], out
    return out


def check_compile(device: torch.device, backend: str) -> dict:
    from moskd.precision import choose_precision

    prec = choose_precision(device, amp=True, training=True)
    torch.manual_seed(0)
    eager = prec.model(tiny_cnn())
    model = prec.model(tiny_cnn())
    model.load_state_dict(eager.state_dict())
    compiled = torch.compile(model, backend=backend)  # inductor: what moskd.engine does with --compile
    opt = torch.optim.SGD(compiled.parameters(), lr=0.05)
    x, y = _batch(device)
    t0 = time.perf_counter()
    first = _step(compiled, prec, x, y, opt)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = [first] + [_step(compiled, prec, x, y, opt) for _ in range(2)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    steady_s = (time.perf_counter() - t0) / 2
    compiled.eval()
    eager.load_state_dict(model.state_dict())
    eager.eval()
    with torch.no_grad():
        diff = float((prec.forward(compiled, x) - prec.forward(eager, x)).abs().max())
    out = {"backend": backend, "first_step_s": round(compile_s, 2), "step_s": round(steady_s, 4), "losses": losses,
           "max_abs_diff_vs_eager": diff}
    assert diff < 0.1, out  # bf16 on both sides: loose, but a broken graph is far off
    return out


def check_ddp(device: torch.device) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from moskd.precision import choose_precision

    backend = "nccl" if device.type == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(backend, init_method=f"file://{tmp}/store", world_size=1, rank=0)
        try:
            prec = choose_precision(device, amp=True, training=True)
            model = DDP(prec.model(tiny_cnn()), device_ids=[device.index] if device.type == "cuda" else None)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            x, y = _batch(device)
            loss = _step(model, prec, x, y, opt)
            t = torch.ones(4, device=device)
            dist.all_reduce(t)
            assert float(t.sum()) == 4.0
            return {"backend": backend, "world_size": dist.get_world_size(), "loss": loss}
        finally:
            dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile check")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend: inductor (moskd --compile's; ~1 min of C++ builds on 2 CPU cores) or "
                        "aot_eager (traces the same graphs, forward and backward, without code generation)")
    args = p.parse_args(argv)
    result: dict = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda, "python": platform.python_version(),
                    "host_cpus": os.cpu_count(), "checks": {}}
    device = None
    checks = [("device", lambda: check_device(args)), ("precision", lambda: check_precision(device)),
              ("compile", lambda: check_compile(device, args.compile_backend)), ("ddp", lambda: check_ddp(device))]
    for name, fn in checks:
        if name == "compile" and args.no_compile:
            result["checks"][name] = {"ok": None, "skipped": "--no-compile"}
            continue
        t0 = time.perf_counter()
        try:
            found = fn()
            result["checks"][name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), **found}
            if name == "device":
                device = torch.device(found["device"])
                result["device"], result["device_name"] = found["device"], found["name"]
        except Exception as e:  # recorded, and the next check still runs
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            result["checks"][name] = {"ok": False, "seconds": round(time.perf_counter() - t0, 2),
                                      "error": f"{type(e).__name__}: {first}"}
            traceback.print_exc()
            if device is None:
                break
        print(f"smoke {name}: {result['checks'][name].get('ok')} "
              f"({result['checks'][name].get('seconds', 0)} s)", flush=True)
    result["ok"] = all(c.get("ok") is not False for c in result["checks"].values()) and \
        len(result["checks"]) == len(checks)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
