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


FAMILY_STYLES = {"router": ("tab:red", "-"), "cascade": ("tab:blue", "-"), "hybrid": ("tab:orange", "-"),
                 "learned": ("tab:green", "-"), "cascade-committee": ("tab:blue", "--"),
                 "hybrid-committee": ("tab:orange", "--"), "learned-committee": ("tab:green", "--")}


def plot_accuracy_vs_macs(r: dict, path: Path) -> None:
    """Two panels. Left: every policy family's select-chosen points (its select-Pareto front, scored on
    test), each model and the deployed policy. Right: the selector's knob curve, each max-softmax
    cascade, random routing, the selector's operating point and the oracle."""
    plt = _pyplot()
    fig, (pax, ax) = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for fam, curve in r["curves"].get("families", {}).items():
        color, style = FAMILY_STYLES.get(fam, ("tab:gray", ":"))
        pax.plot([p["macs_per_image"] for p in curve], [p["accuracy"] for p in curve], style, color=color,
                 marker=".", label=fam, alpha=0.85)
    for k, v in r["models"].items():
        if v["accuracy"] is not None:
            pax.scatter(v["macs"], v["accuracy"], marker="s" if v["role"] == "teacher" else "o", color="black", s=30,
                        zorder=4)
            pax.annotate(k, (v["macs"], v["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    pol = r["policy"]
    pax.scatter(pol["macs_per_image"], pol["accuracy"], marker="*", s=260, color="gold", edgecolor="black",
                label=f"deployed ({pol['family']})", zorder=5)
    pax.set_xscale("log")
    pax.set_xlabel("MACs per image")
    pax.set_ylabel(f"top-1 accuracy on {r['split']}")
    pax.set_title("routing policies (points chosen on select)")
    pax.grid(alpha=0.3)
    pax.legend(loc="lower right", fontsize=7)
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
               edgecolor="black", label="selector alone (operating point)", zorder=5)
    ax.axhline(r["oracle"]["accuracy"], linestyle=":", color="tab:green", label="oracle (any student right)")
    ax.set_xscale("log")
    ax.set_xlabel("MACs per image")
    ax.set_title(f"{r['dataset']}: selector, cascades, random ({r['num_images']} images)")
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
