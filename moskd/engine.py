"""The one training loop. A stage supplies model, data and objective; this does the rest.

Optimizer and LR schedule come from timm's factories, EMA from timm.utils.ModelEmaV3. Each epoch:
train on `train`, evaluate on `select`, write last.pt (and best.pt when the select metric
improves), append one line to metrics.jsonl. last.pt carries everything needed to continue
bit-identically: model, EMA, optimizer, scheduler, epoch, update count, metric history. best.pt
is slim: only what inference needs (weights, EMA weights, model card, resolved config), since the
optimizer state of AdamW is twice the weights again. `--keep-last no` deletes last.pt once the
stage has finished, when nothing needs to resume it any more (`moskd clean RUN` does the same later).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from moskd.atomic import write_json, write_text
from moskd.checkpoint import inference_weights, load_checkpoint, save_checkpoint
from moskd.config import to_dict, write_config
from moskd.loader import TensorLoader
from moskd.errors import MoskdError
from moskd.plots import plot_curves
from moskd.precision import Precision, choose_precision
from moskd.run import StageDir
from moskd.runtime import Runtime, log, show_progress, union_across_ranks
from moskd.settings import TrainConfig

Batch = tuple  # (images, targets, *extras), already on the device
Metric = Callable[[torch.Tensor, Batch], tuple[float, int]]  # (logits, batch) -> (sum of scores, count)


@dataclass
class LossOutput:
    """What an objective returns: the logits it computed (for the training metric) and its loss
    parts. parts["loss"] is what is minimised; every other entry (e.g. "ce", "kd") is a named
    component, logged per epoch as train_loss_<name> in metrics.jsonl and drawn in curves.png."""
    logits: torch.Tensor
    parts: dict[str, torch.Tensor]


# The objective owns the forward pass: (model, batch, precision policy) -> LossOutput. So the loop
# never knows the method: a feature-level loss hooks the model itself, a KD loss runs its teacher.
Objective = Callable[[nn.Module, Batch, Precision], LossOutput]


def on_logits(loss: Callable[[torch.Tensor, Batch], torch.Tensor | dict]) -> Objective:
    """The objective whose forward pass is the plain model call; `loss(logits fp32, batch)` gives
    the loss, or a dict of parts holding "loss"."""
    def objective(model: nn.Module, batch: Batch, prec: Precision) -> LossOutput:
        logits = prec.forward(model, batch[0])
        parts = loss(logits, batch)
        return LossOutput(logits, parts if isinstance(parts, dict) else {"loss": parts})

    return objective


@dataclass
class Stage:
    """What a stage hands the engine."""
    role: str  # teacher | student | selector
    out_dir: Path
    model: nn.Module
    train_loader: TensorLoader
    select_loader: TensorLoader
    objective: Objective
    card: dict  # role, arch, dataset card and model kwargs: written into every checkpoint
    metric: Metric = None  # type: ignore[assignment]  # default: top-1 accuracy
    metric_name: str = "acc"

    def __post_init__(self):
        if self.metric is None:
            self.metric = top1


def top1(logits: torch.Tensor, batch: Batch) -> tuple[float, int]:
    return (logits.argmax(1) == batch[1]).sum().item(), len(batch[1])


def cross_entropy(label_smoothing: float = 0.0) -> Objective:
    return on_logits(lambda logits, batch: F.cross_entropy(logits, batch[1], label_smoothing=label_smoothing))


def _scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    name = {"linear": "poly"}.get(cfg.scheduler, cfg.scheduler)  # poly with power 1 is linear decay
    kwargs = dict(decay_rate=1.0) if cfg.scheduler == "linear" else dict(decay_rate=cfg.lr_decay)
    sched, _ = create_scheduler_v2(
        optimizer, sched=name, num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.lr / 100,
        min_lr=cfg.min_lr, decay_milestones=cfg.lr_milestones or [cfg.epochs + 1],
        decay_epochs=max(1, cfg.epochs // 3), step_on_epochs=False, updates_per_epoch=steps_per_epoch, **kwargs,
    )
    return sched


def prepare_out_dir(out_dir: Path, cfg: TrainConfig, command: str, card: dict) -> Optional[dict]:
    """Guard what is already written; returns the checkpoint to resume from, if any."""
    last = StageDir(out_dir).last
    if cfg.resume:
        if not last.exists() and StageDir(out_dir).finished:
            raise MoskdError(f"nothing to resume: {out_dir} has finished and its last.pt was dropped "
                             f"(--keep-last no); pass --force to train it again")
        if not last.exists():
            raise MoskdError(f"nothing to resume: {last} does not exist; run {command} without --resume")
        return load_checkpoint(last, role=card["role"], arch=card["arch"], num_classes=card["num_classes"],
                               dataset=card["dataset"], hint=f"pass --force to start {out_dir} over")
    finished = StageDir(out_dir).finished  # last.pt may be gone (--keep-last no)
    if (last.exists() or finished) and not cfg.force:
        raise MoskdError(f"{out_dir} already holds a run; pass --resume to continue it or --force to start over")
    return None


@torch.inference_mode()
def evaluate(model: nn.Module, loader: TensorLoader, metric: Metric, rt: Runtime, amp: bool = True) -> float:
    model.eval()
    prec = choose_precision(rt.device, amp)  # inference policy: what the report and the bundle will see
    prec.model(model)
    total, count = 0.0, 0
    for batch in loader:
        with prec.autocast():
            logits = model(prec.input(batch[0]))
        s, n = metric(logits.float(), batch)
        total, count = total + s, count + n
    if rt.distributed:
        t = torch.tensor([total, count], dtype=torch.float64, device=rt.device)
        dist.all_reduce(t)
        total, count = t.tolist()
    return total / max(count, 1)


@dataclass
class _State:
    """What one training run carries from epoch to epoch (all of it is in last.pt)."""
    epoch: int = 0  # the next epoch to run
    num_updates: int = 0
    best: float = float("-inf")
    best_epoch: int = -1
    history: list = field(default_factory=list)


def _restore(resume: dict, raw: nn.Module, optimizer, scheduler, ema) -> _State:
    raw.load_state_dict(resume["model"])
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    if ema is not None and resume.get("ema") is not None:
        ema.module.load_state_dict(resume["ema"])
    return _State(resume["epoch"] + 1, resume["num_updates"], resume["best_metric"], resume["best_epoch"],
                  list(resume["history"]))


def _train_epoch(stage: Stage, model: nn.Module, raw: nn.Module, optimizer, scheduler, ema, prec: Precision,
                 state: _State, cfg: TrainConfig, rt: Runtime, epoch: int) -> dict:
    """One pass over `train`; returns the epoch's mean loss parts and training metric (all ranks)."""
    torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rt.rank)  # dropout etc.: per-epoch, resumable
    stage.train_loader.set_epoch(epoch)
    model.train()
    part_sums: dict[str, torch.Tensor] = {}  # loss parts summed over images (kept on the device)
    score_sum, seen = 0.0, 0
    bar = tqdm(stage.train_loader, desc=f"{stage.role} {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not show_progress(rt), unit="batch")
    for batch in bar:
        result = stage.objective(model, batch, prec)
        loss = result.parts["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.num_updates += 1
        scheduler.step_update(state.num_updates)
        if ema is not None:
            ema.update(raw, step=state.num_updates)
        n = len(batch[1])
        for name, value in result.parts.items():
            part_sums[name] = part_sums.get(name, 0) + value.detach().float() * n
        s, _ = stage.metric(result.logits.detach().float(), batch)
        score_sum, seen = score_sum + s, seen + n
    scheduler.step(epoch + 1)
    names = list(part_sums)  # same order on every rank: the objective builds the dict the same way
    train_stats = torch.tensor([score_sum, seen] + [part_sums[k].item() for k in names],
                               dtype=torch.float64, device=rt.device)
    if rt.distributed:
        dist.all_reduce(train_stats)
    count = train_stats[1].item()
    losses = {("train_loss" if k == "loss" else f"train_loss_{k}"): train_stats[2 + i].item() / count
              for i, k in enumerate(names)}
    return {**losses, f"train_{stage.metric_name}": train_stats[0].item() / count, "_count": count}


def fit(stage: Stage, cfg: TrainConfig, rt: Runtime, command: str) -> dict:
    """Train `stage.model` on its objective; returns a summary of the best (select) epoch."""
    out = StageDir(stage.out_dir)
    resume = prepare_out_dir(out.path, cfg, command, stage.card)
    rt.barrier()  # every rank has passed the guard before rank 0 writes anything
    prec = choose_precision(rt.device, cfg.amp, training=True)
    raw = prec.model(stage.model)
    optimizer = create_optimizer_v2(raw, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    scheduler = _scheduler(cfg, optimizer, len(stage.train_loader))
    ema = ModelEmaV3(raw, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    state = _State()
    if resume is not None:
        state = _restore(resume, raw, optimizer, scheduler, ema)
        log(rt, f"resuming {out.path} after epoch {resume['epoch'] + 1}/{cfg.epochs}")
    model: nn.Module = torch.compile(raw) if cfg.compile else raw
    if rt.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.cuda else None)
    if rt.is_main:
        out.path.mkdir(parents=True, exist_ok=True)
        write_config(cfg, out.config)
        write_metrics(out.metrics, state.history)  # rewritten from the checkpoint's history on resume
    eval_model = ema.module if ema is not None else raw

    for epoch in range(state.epoch, cfg.epochs):
        t0 = time.perf_counter()
        train = _train_epoch(stage, model, raw, optimizer, scheduler, ema, prec, state, cfg, rt, epoch)
        count = train.pop("_count")
        select_metric = evaluate(eval_model, stage.select_loader, stage.metric, rt, cfg.amp)
        seconds = time.perf_counter() - t0
        improved = select_metric > state.best
        if improved:
            state.best, state.best_epoch = select_metric, epoch
        record = {
            "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train,
            f"select_{stage.metric_name}": select_metric, "best_epoch": state.best_epoch + 1,
            "seconds": round(seconds, 3), "images_per_s": round(count / seconds, 1),
            "world_size": rt.world, "precision": prec.name,
        }
        state.history.append(record)
        if rt.is_main:
            ckpt = {
                "model": raw.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "num_updates": state.num_updates, "best_metric": state.best,
                "best_epoch": state.best_epoch, "history": state.history, "config": to_dict(cfg), "card": stage.card,
            }
            if improved:  # best.pt before last.pt: a last.pt on disk implies its best epoch's best.pt
                save_checkpoint(slim(ckpt), out.best)
            save_checkpoint(ckpt, out.last)
            write_metrics(out.metrics, state.history)
        log(rt, f"{stage.role} epoch {epoch + 1}/{cfg.epochs}  loss {record['train_loss']:.4f}  "
                f"train {stage.metric_name} {record[f'train_{stage.metric_name}']:.4f}  "
                f"select {stage.metric_name} {select_metric:.4f}  {seconds:.1f}s")
        rt.barrier()
    return {"best_select": state.best, "best_epoch": state.best_epoch + 1, "epochs": cfg.epochs}


def write_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl, one line per epoch, rewritten whole (atomically) after each epoch."""
    write_text(path, "".join(json.dumps(h) + "\n" for h in history))


INFERENCE_KEYS = ("model", "ema", "card", "config", "epoch", "best_metric", "best_epoch")


def slim(ckpt: dict) -> dict:
    """What best.pt keeps: weights and card (plus small bookkeeping), no optimizer or scheduler."""
    return {k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt}


def drop_last(out_dir: Path) -> bool:
    """Delete a finished stage's last.pt (only --resume reads it); True when one was deleted."""
    last = StageDir(out_dir).last
    if not StageDir(out_dir).finished or not last.is_file():
        return False
    last.unlink()
    return True


def complete(out_dir: Path, summary: dict, keep_last: str) -> None:
    """What every stage does last (rank 0): summary.json (atomic: it marks the stage finished), then
    curves.png from metrics.jsonl, then, with --keep-last no, drop last.pt (after summary.json: a
    crash before it leaves last.pt to resume from)."""
    write_json(StageDir(out_dir).summary, summary)
    plot_curves(out_dir)
    if keep_last == "no":
        drop_last(out_dir)


def finish(stage: Stage, cfg: TrainConfig, rt: Runtime, summary: dict, test_loader: TensorLoader) -> dict:
    """Score best.pt once on `test` (reporting only: nothing is chosen on it); write summary.json."""
    # a streamed folder: files that could not be decoded, on any rank (train and select are sharded)
    streamed = hasattr(test_loader, "skipped")
    skipped = union_across_ranks(set().union(*(getattr(ld, "skipped", set()) for ld in (
        stage.train_loader, stage.select_loader)))) if streamed else set()
    if rt.is_main:
        best = load_checkpoint(StageDir(stage.out_dir).best, role=stage.role)
        model = stage.model
        model.load_state_dict(inference_weights(best))
        summary[f"test_{stage.metric_name}"] = evaluate(model, test_loader, stage.metric,
                                                       Runtime(rt.device), cfg.amp)
        if streamed:  # test is scored on this rank alone
            summary["skipped_files"] = len(skipped | test_loader.skipped)
        complete(stage.out_dir, summary, cfg.keep_last)
        log(rt, f"{stage.role}: best select {stage.metric_name} {summary['best_select']:.4f} "
                f"(epoch {summary['best_epoch']}), test {stage.metric_name} "
                f"{summary[f'test_{stage.metric_name}']:.4f} -> {StageDir(stage.out_dir).best}")
    rt.barrier()
    return summary
