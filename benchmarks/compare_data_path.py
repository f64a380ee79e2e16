"""The in-memory data path of two checkouts side by side: splits, mean/std, fingerprint and the first
training batches of digits and Fashion-MNIST must be identical (issue 27: the streaming backend may
not change what digits and Fashion-MNIST runs see).

    python benchmarks/compare_data_path.py OLD_CHECKOUT NEW_CHECKOUT

Each checkout is loaded in its own child process; prints one line per case and exits 1 on a difference.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [("digits", {}), ("digits", {"train_limit": 500, "limit": 300}), ("digits", {"image_size": 16}),
         ("fashion-mnist", {"limit": 3000})]


def child(root: str, out: str) -> None:
    sys.path.insert(0, root)
    from moskd.data import load_data
    from moskd.loader import make_loader

    rec = {}
    for name, kw in CASES:
        d = load_data(name, **kw)
        r = {k: [t.clone() for t in (s.images, s.targets, s.index)] for k, s in d.splits.items()}
        r["meta"] = (d.mean, d.std, repr(d.aug), d.class_names, d.fingerprint())
        r["batches"] = [b[0].clone() for b, _ in zip(make_loader(d, "train", 64, train=True, seed=0), range(5))]
        rec[f"{name} {kw}"] = r
    with open(out, "wb") as f:
        pickle.dump(rec, f)


def main() -> int:
    import torch

    if sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return 0
    recs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, root in enumerate(sys.argv[1:3]):
            out = str(Path(tmp) / f"{k}.pkl")
            subprocess.run([sys.executable, __file__, "--child", str(Path(root).resolve()), out], check=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ""})
            with open(out, "rb") as f:
                recs.append(pickle.load(f))
    bad = 0
    for case, a in recs[0].items():
        b = recs[1][case]
        same = a["meta"] == b["meta"] and a.keys() == b.keys() and all(
            len(a[k]) == len(b[k]) and all(torch.equal(x, y) for x, y in zip(a[k], b[k])) for k in a if k != "meta")
        bad += not same
        print(f"{case}: {'identical' if same else 'DIFFERENT'} ({', '.join(k for k in a if k != 'meta')}, mean/std, "
              f"fingerprint)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
