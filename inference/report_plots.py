"""The report's figures: accuracy vs MACs for every system, and confusion matrices."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from moskd.atomic import atomic_write

MARKERS = "s^vD<>ph"
CASCADE_COLORS = ["tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_macs(r: dict, path: Path) -> None:
    """One figure holding every system: each model as a point, the router's knob curve, each
    max-softmax cascade, random routing, the routed operating point and the oracle."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([p["macs_per_image"] for p in r["curves"]["router"]], [p["accuracy"] for p in r["curves"]["router"]],
            "-", color="tab:red", marker=".", label="router (cost knob swept)", zorder=3)
    for i, (key, curve) in enumerate(r["curves"]["cascade"].items()):
        ax.plot([p["macs_per_image"] for p in curve], [p["accuracy"] for p in curve], "-", alpha=0.8,
                color=CASCADE_COLORS[i % len(CASCADE_COLORS)], marker=MARKERS[i % len(MARKERS)], markersize=3,
                label=f"cascade {key}", zorder=2)
    rnd = r["curves"]["random"]
    ax.plot([p["macs_per_image"] for p in rnd], [p["accuracy"] for p in rnd], "--", color="tab:gray",
            label="random routing", zorder=2)
    for k, v in r["models"].items():
        if v["accuracy"] is not None:
            ax.scatter(v["macs"], v["accuracy"], marker="s" if v["role"] == "teacher" else "o", color="black",
                       s=30, zorder=4)
            ax.annotate(k, (v["macs"], v["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    students = r["routed"]["students"]
    ax.scatter(sum(r["models"][k]["macs"] for k in students), r["baselines"]["most_confident"], marker="P", s=80,
               color="tab:purple", label="more-confident student (runs all)", zorder=4)
    ax.scatter(r["routed"]["macs_per_image"], r["routed"]["accuracy"], marker="*", s=220, color="tab:red",
               edgecolor="black", label="routed (operating point)", zorder=5)
    ax.axhline(r["oracle"]["accuracy"], linestyle=":", color="tab:green", label="oracle (any student right)")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image")
    ax.set_ylabel(f"top-1 accuracy on {r['split']}")
    ax.set_title(f"{r['dataset']}: accuracy vs compute ({r['num_images']} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def plot_confusions(r: dict, path: Path) -> None:
    """Row-normalised confusion matrix of every model that classifies."""
    plt = _pyplot()
    rows = [(k, np.asarray(v["confusion"], dtype=float)) for k, v in r["models"].items() if v.get("confusion")]
    cols = min(3, len(rows))
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(4 * cols, 3.6 * ((len(rows) + cols - 1) // cols)),
                             squeeze=False)
    for ax, (name, cm) in zip(axes.flat, rows):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{name} ({100 * np.trace(cm) / max(cm.sum(), 1):.2f}%)", fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
