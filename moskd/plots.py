"""Training curves of a stage, from its metrics.jsonl: loss and metric per epoch, one PNG.

matplotlib is imported inside the function, so importing moskd stays fast, and only its
Figure API is used (no pyplot): no display, no global backend switch, no figures left open.
"""
from __future__ import annotations

import json
from pathlib import Path

from moskd.atomic import atomic_write
from moskd.run import StageDir


def read_metrics(stage_dir: str | Path) -> list[dict]:
    path = StageDir(Path(stage_dir)).metrics
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(stage_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write curves.png (train loss and its named parts; train and select metric per epoch) next to metrics.jsonl."""
    from matplotlib.figure import Figure

    stage_dir = Path(stage_dir)
    rows = read_metrics(stage_dir)
    out = Path(out) if out else StageDir(stage_dir).curves
    epochs = [r["epoch"] for r in rows]
    # the metric is whatever the stage logged as train_<name> / select_<name> (acc for classifiers)
    metrics = sorted({k.split("_", 1)[1] for r in rows for k in r if k.startswith("select_")})

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", label="train (total)")
    parts = sorted({k for r in rows for k in r if k.startswith("train_loss_")})  # named parts: ce, kd, ...
    for key in parts:
        ax_loss.plot(epochs, [r.get(key) for r in rows], "--", marker=".", label=key[len("train_loss_"):])
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    for name in metrics:
        for split, style in (("train", "--"), ("select", "-")):
            key = f"{split}_{name}"
            if all(key in r for r in rows):
                ax_metric.plot(epochs, [r[key] for r in rows], style, marker="o", label=key)
    best = rows[-1].get("best_epoch") if rows else None
    if best:
        ax_metric.axvline(best, color="grey", lw=0.8, ls=":", label=f"best epoch {best}")
    names = ", ".join(metrics) or "metric"
    ax_metric.set(xlabel="epoch", ylabel=names, title=f"{stage_dir.name}: {names}")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    return out
