"""The trainSelector stage's work: label `select` with the students' correctness, train the
selector on it, calibrate it and choose the router's operating point (its settings, SelectorConfig, live in selector.config and
its command line in selector.cli, both torch-free)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from moskd.choose import choose_point
from moskd.checkpoint import inference_weights, load_checkpoint, save_checkpoint
from moskd.data import DataBundle, data_from_config
from moskd.loader import TensorLoader, parts_loader
from moskd.engine import Stage, complete, fit, on_logits, prepare_out_dir
from moskd.errors import MoskdError
from moskd.models import create_model
from moskd.profile import count_macs
from moskd.run import RunDir
from moskd.loaded import SPLIT_KEYS
from moskd.runtime import Runtime, log, show_progress
from selector.config import TARGETS, SelectorConfig
from selector.labels import complementary_partition, describe, label_split, owner_targets, save_labels
from moskd.policy import entry_routes, knob_grid, relative_costs

MAC_BUDGET = 0.05  # the selector may cost at most this share of the cheapest student's MACs


def routes(scores: torch.Tensor, tie_margin: float, knob: float = 0.0, macs: list[int] | None = None
           ) -> torch.Tensor:
    """The policy's selector entry rule (moskd.policy.entry_routes) on torch scores."""
    costs = relative_costs(macs) if macs is not None else None
    r = entry_routes(scores.detach().float().cpu().numpy(), tie_margin, knob, costs)
    return torch.from_numpy(r).to(scores.device)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, held-out) indices of `select`; both parts non-empty."""
    if not 0 < fraction < 1:
        raise MoskdError("--holdout-fraction must lie strictly between 0 and 1")
    if n < 2:
        raise MoskdError(f"`select` holds {n} image(s); the selector needs at least 2 (raise --limit)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = min(n - 1, max(1, round(fraction * n)))
    return order[held:].sort().values, order[:held].sort().values


TARGET_LABELS = {"prob": "true_prob", "correct": "correct", "owner": "owner"}  # --target -> labels key


def bce_on_target(logits: torch.Tensor, batch) -> torch.Tensor:
    """batch = (images, class labels, per-student target in [0, 1], per-student correctness)."""
    return F.binary_cross_entropy_with_logits(logits, batch[2])


TIE_BREAK = 1e-6  # weight of the BCE tie-break in the checkpoint metric (below any accuracy step)


def routed_score(tie_margin: float):
    """Engine metric: routed accuracy (how often the student an image is routed to is right; batch[3] =
    correctness) less TIE_BREAK x BCE, so a score, not an accuracy.

    Routed accuracy moves in steps of 1/N and often plateaus from the first epoch (e.g. when
    routing everything to the cheapest student is already as good as it gets); the engine keeps
    the first best epoch, which then is a barely trained, badly calibrated selector. A tiny BCE
    term (TIE_BREAK x BCE, far below one image's worth of accuracy) breaks such ties towards the
    better-calibrated epoch, whose scores the cascade's threshold relies on.
    """
    def metric(logits: torch.Tensor, batch) -> tuple[float, int]:
        route = routes(logits.sigmoid(), tie_margin)
        right = batch[3].gather(1, route[:, None]).sum().item()
        bce = F.binary_cross_entropy_with_logits(logits, batch[2], reduction="sum").item() / batch[2].shape[1]
        return right - TIE_BREAK * bce, len(route)

    return metric


def resolve_target(cfg: SelectorConfig, partition: dict | None) -> SelectorConfig:
    """--target auto -> owner for complementary students, prob otherwise; owner needs a partition."""
    if cfg.target == "auto":
        return dataclasses.replace(cfg, target="owner" if partition else "prob")
    if cfg.target == "owner" and partition is None:
        raise MoskdError("--target owner: these students were trained independently (no --complementary "
                         "partition on their cards); pass --target prob or correct")
    return cfg


def _loader(data: DataBundle, card: dict, parts: list[tuple[str, torch.Tensor, dict]], cfg: SelectorConfig,
            rt: Runtime, train: bool) -> TensorLoader:
    """Batches of (image, class, per-student target, per-student correctness) from the given
    (split, indices, labels of that split) parts, concatenated."""
    key = TARGET_LABELS[cfg.target]
    target = torch.cat([lab[key][idx].float() for _, idx, lab in parts])
    correct = torch.cat([lab["correct"][idx].float() for _, idx, lab in parts])
    return parts_loader(
        data, [(split, idx) for split, idx, _ in parts], mean=card["mean"], std=card["std"],
        batch_size=cfg.batch_size if train else cfg.eval_batch_size, device=rt.device, train=train,
        augment=cfg.augment, extras=(target, correct), seed=cfg.seed, rank=rt.rank, world=rt.world,
    )


def check_spare(students: list, data: DataBundle, cfg: SelectorConfig) -> None:
    """--labels-from select+spare needs spare images that no student trained on."""
    if "spare" not in data.splits:
        raise MoskdError("--labels-from select+spare: this run has no spare images (every image of the training "
                         "pool trains the students); pass --labels-from select, or a --train-limit below the pool")
    for s in students:
        if "train_limit" not in s.config:
            raise MoskdError(f"--labels-from select+spare: {s.path} records no training settings, so whether it saw "
                             f"the spare images is unknown; pass --labels-from select")
        limit = s.config["train_limit"]
        if limit is None:
            raise MoskdError(f"--labels-from select+spare: {s.path} was trained on the whole training pool (no "
                             f"--train-limit), so it has seen every spare image; pass --labels-from select")
        if limit > cfg.train_limit:
            raise MoskdError(f"--labels-from select+spare: {s.path} was trained with --train-limit {limit}, more than "
                             f"this run's {cfg.train_limit}, so the spare images overlap its training images; "
                             f"pass --train-limit {limit}")


def check_resume_matches(resume: dict | None, cfg: SelectorConfig) -> None:
    """--resume continues the same training set: its schedule was laid out for that set's size."""
    if resume is None:
        return
    was = resume.get("config") or {}
    for key, default in (("labels_from", "select"), ("train_limit", None)):
        before, now = was.get(key, default), getattr(cfg, key)
        if before != now:
            flag = "--" + key.replace("_", "-")
            fix = f"{flag} {before}" if before is not None else f"no {flag}"
            raise MoskdError(f"--resume: this selector was trained with {flag} {before}, not {now}; "
                             f"pass {fix} to resume it, or --force to start over")


def check_budget(selector_macs: int, student_macs: list[int], names: list[str], width: int) -> None:
    limit = MAC_BUDGET * min(student_macs)
    if selector_macs > limit:
        raise MoskdError(f"selector costs {selector_macs:,} MACs per image, over {MAC_BUDGET:.0%} of the cheapest "
                         f"student {names[0]} ({min(student_macs):,}); lower --width (now {width})")


@torch.inference_mode()
def heldout_logits(model, loader: TensorLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(selector logits (N, S), correctness (N, S)) over the held-out part of `select`."""
    model.eval()
    logits, correct = [], []
    for batch in loader:
        logits.append(model(batch[0]).float().cpu())
        correct.append(batch[3].cpu())
    return torch.cat(logits), torch.cat(correct)


def fit_platt(logits: torch.Tensor, correct: torch.Tensor, steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-student (scale, bias) minimising BCE(sigmoid(scale * logit + bias), correct); scale > 0, so
    calibration never reorders one student's images."""
    def positive(raw: torch.Tensor) -> torch.Tensor:  # scale = 1 at raw = 0, always > 0
        return F.softplus(raw) / math.log(2) + 1e-3

    raw = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    z, y = logits.double(), correct.double()
    opt = torch.optim.LBFGS([raw, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = F.binary_cross_entropy_with_logits(z * positive(raw) + bias, y)
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(loss)
    return positive(raw.detach()).float(), bias.detach().float()


def routed_stats(scores: torch.Tensor, correct: torch.Tensor, macs: list[int], tie_margin: float,
                 knob: float) -> tuple[float, float]:
    """(accuracy, student MACs per image) of routing these images at `knob`."""
    route = routes(scores, tie_margin, knob, macs)
    cost = torch.tensor(macs, dtype=torch.float64)[route].mean().item()
    return correct.gather(1, route[:, None]).float().mean().item(), cost


class KnobPoint(NamedTuple):
    knob: float
    accuracy: float
    macs: float  # the students' MACs per image at this knob


def choose_knob(scores: torch.Tensor, correct: torch.Tensor, macs: list[int], tie_margin: float) -> dict:
    """The operating point on held-out `select` images, by the one chooser (moskd.choose) with no
    target: the best routed accuracy, ties to fewer MACs."""
    grid = knob_grid(scores.double().cpu().numpy(), relative_costs(macs), tie_margin)
    points = [KnobPoint(k, *routed_stats(scores, correct, macs, tie_margin, k)) for k in grid]
    best = choose_point(points)
    return {"knob": best.knob, "accuracy": best.accuracy, "student_macs": best.macs,
            "curve": [{"knob": p.knob, "accuracy": p.accuracy, "student_macs": p.macs} for p in points]}


def heldout_summary(scores: torch.Tensor, correct: torch.Tensor, tie_margin: float, knob: float,
                    names: list[str], macs: list[int]) -> dict:
    """Routed accuracy at the operating point on the held-out part, beside always-one-student and oracle."""
    route = routes(scores, tie_margin, knob, macs)
    out = {"heldout_images": len(route), "heldout_routed_acc": correct.gather(1, route[:, None]).mean().item(),
           "heldout_oracle": correct.max(1).values.mean().item()}
    out.update({f"heldout_always_{n}": correct[:, i].mean().item() for i, n in enumerate(names)})
    out["heldout_route_share"] = {n: (route == i).float().mean().item() for i, n in enumerate(names)}
    # calibration: mean predicted P(right) vs how often the student was right, per student
    out["heldout_calibration"] = {n: {"mean_score": scores[:, i].mean().item(), "accuracy": correct[:, i].mean().item()}
                                  for i, n in enumerate(names)}
    return out


def finalize(model, best_path: Path, held_loader: TensorLoader, held: torch.Tensor, cfg: SelectorConfig,
             macs: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Calibrate the chosen checkpoint and pick its operating knob on the held-out images, then
    rewrite best.pt with both: the router needs nothing else. Returns (scores, correctness, operating point)."""
    best = load_checkpoint(best_path, role="selector")
    model.load_state_dict(inference_weights(best))
    logits, correct = heldout_logits(model, held_loader)
    if cfg.calibrate:
        scale, bias = fit_platt(logits, correct)
        model.calib_scale.copy_(scale * model.calib_scale)  # compose with what the checkpoint held
        model.calib_bias.copy_(scale * model.calib_bias + bias)
        logits = logits * scale + bias
    operating = choose_knob(logits.sigmoid(), correct, macs, cfg.tie_margin)
    best["card"] = {**best["card"], "knob": operating["knob"], "calibrated": cfg.calibrate,
                    "heldout_index": held.tolist()}
    best["model"], best["ema"] = {k: v.detach().clone() for k, v in model.state_dict().items()}, None
    save_checkpoint(best, best_path)
    return logits.sigmoid(), correct, operating


def build_selector(cfg: SelectorConfig, data: DataBundle, students: list) -> tuple[torch.nn.Module, dict]:
    """The untrained selector (seeded) and its model card, within the MAC budget."""
    names, macs = [s.name for s in students], [s.macs for s in students]
    torch.manual_seed(cfg.seed)
    kwargs = {"width": cfg.width, "dropout": cfg.dropout}
    model = create_model("selector_cnn", len(names), data.in_chans, **kwargs)
    selector_macs = count_macs(model, data.input_size)
    check_budget(selector_macs, macs, names, cfg.width)
    card = {
        "role": "selector", "arch": "selector_cnn", **data.card(),
        "num_classes": len(names), "class_names": names,  # the selector's "classes" are the students
        "dataset_class_names": data.class_names, "students": names, "student_macs": macs,
        "selector_macs": selector_macs, "tie_margin": cfg.tie_margin, "model_kwargs": kwargs,
        # the selector sees the very batch its students see: same normalisation as theirs
        "mean": students[0].card["mean"], "std": students[0].card["std"],
    }
    return model, card


def label_students(cfg: SelectorConfig, rt: Runtime, students: list, data: DataBundle, card: dict, out
                   ) -> tuple[SelectorConfig, dict, dict | None]:
    """Each student's correctness on `select` (and `spare`), the target resolved from the students'
    cards (card["target"] set), labels.pt written: (cfg, select labels, spare labels or None)."""
    names = [s.name for s in students]
    labels = label_split(students, data, "select", cfg.eval_batch_size, rt.device, show_progress(rt))
    log(rt, describe(labels["stats"]))
    partition = complementary_partition(students)
    cfg = resolve_target(cfg, partition)
    if partition is not None:
        labels["owner"] = owner_targets(data.splits["select"].targets, partition["class_owner"], names)
    spare = None
    if cfg.labels_from == "select+spare":
        spare = label_split(students, data, "spare", cfg.eval_batch_size, rt.device, show_progress(rt))
        log(rt, describe(spare["stats"], "spare"))
        if partition is not None:
            spare["owner"] = owner_targets(data.splits["spare"].targets, partition["class_owner"], names)
    card["target"] = cfg.target
    log(rt, f"selector target: {cfg.target}"
            + (f" (students specialise: --complementary {partition['method']})" if partition else ""))
    if rt.is_main:
        save_labels(labels, out.labels)
    return cfg, labels, spare


def run(cfg: SelectorConfig, rt: Runtime) -> dict:
    if cfg.target not in TARGETS:
        raise MoskdError(f"--target {cfg.target}: choose one of {', '.join(TARGETS)}")
    run = RunDir(cfg.run_dir)
    out = run.selector
    data = data_from_config(cfg)
    students = run.load_students(cfg.students, dataset=data.name, num_classes=data.num_classes,
                                 split={k: getattr(cfg, k) for k in SPLIT_KEYS}, device=rt.device)
    names, macs = [s.name for s in students], [s.macs for s in students]
    if list(students[0].card["input_size"]) != data.input_size:
        raise MoskdError(f"{students[0].path}: takes {students[0].card['input_size']} inputs, this data is "
                         f"{data.input_size}; pass the --dataset/--image-size the students were trained with")
    model, card = build_selector(cfg, data, students)
    resume = prepare_out_dir(out.path, cfg, "trainSelector", card)  # refuse before labels.pt is (over)written
    check_resume_matches(resume, cfg)
    if cfg.labels_from == "select+spare":
        check_spare(students, data, cfg)
    log(rt, f"selector: {card['selector_macs']:,} MACs per image = {card['selector_macs'] / min(macs):.2%} of "
            f"{names[0]}; route order {', '.join(names)}")
    cfg, labels, spare = label_students(cfg, rt, students, data, card, out)
    del students  # only their labels are needed from here on

    tr, held = holdout_split(len(labels["correct"]), cfg.holdout_fraction, cfg.split_seed)
    training = [("select", tr, labels)] + ([("spare", torch.arange(len(spare["correct"])), spare)] if spare else [])
    held_part = [("select", held, labels)]
    stage = Stage(
        role="selector", out_dir=out.path, model=model,
        train_loader=_loader(data, card, training, cfg, rt, train=True),
        select_loader=_loader(data, card, held_part, cfg, rt, train=False),
        objective=on_logits(bce_on_target), card=card,
        metric=routed_score(cfg.tie_margin), metric_name="routed_acc",
    )
    summary = fit(stage, cfg, rt, "trainSelector")
    if rt.is_main:
        held_loader = _loader(data, card, held_part, cfg, Runtime(rt.device), train=False)
        scores, correct, operating = finalize(model, out.best, held_loader, held, cfg, macs)
        summary.update(heldout_summary(scores, correct, cfg.tie_margin, operating["knob"], names, macs))
        summary.update(operating_point=operating, labels=labels["stats"], train_images=len(stage.train_loader.targets))
        if spare:
            summary["spare_labels"] = spare["stats"]
        complete(out.path, summary, cfg.keep_last)  # summary.json, curves.png, --keep-last
        always = ", ".join(f"{n} {summary[f'heldout_always_{n}']:.4f}" for n in names)
        log(rt, f"selector: held-out routed acc {summary['heldout_routed_acc']:.4f} at knob "
                f"{operating['knob']:.4f} (always: {always}; oracle {summary['heldout_oracle']:.4f}) -> {out.best}")
    rt.barrier()
    return summary

