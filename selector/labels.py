"""Selector labels: which student gets each `select` image right.

Every student runs over `select` (held out of training; never `test`). Per image we keep each
student's logits and correctness. A student that is right is a good route; when several are right
the cheaper one (fewer MACs) is preferred; images no student gets right carry no routing signal
(preferred route -1). Only images where exactly one student is right can be won or lost by
routing, so their count is reported. The students come from moskd.run.RunDir.load_students.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from moskd.checkpoint import save_checkpoint
from moskd.data import DataBundle
from moskd.loader import TensorLoader, parts_loader
from moskd.errors import MoskdError
from moskd.precision import choose_precision
from moskd.loaded import Student


@torch.inference_mode()
def collect_logits(models: list[nn.Module], loader: TensorLoader, desc: str = "", progress: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, S, C) float logits of every model, (N,) targets) over a non-shuffled loader, on the CPU."""
    prec = choose_precision(loader.device)  # the inference policy: labels describe the students as they will run
    for m in models:
        prec.model(m.eval())
    logits, targets = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        logits.append(torch.stack([prec.forward(m, batch[0]) for m in models], 1).cpu())
        targets.append(batch[1].cpu())
    return torch.cat(logits), torch.cat(targets)


def complementary_partition(students: list[Student]) -> dict | None:
    """The class -> owner map the students were trained to specialise on (StudentTrain --complementary),
    when every student shares one; None for independent students."""
    found = [(s.card.get("distillation") or {}).get("complementary") or {} for s in students]
    owners = {tuple(f.get("class_owner") or ()) for f in found}
    if len(owners) != 1 or not next(iter(owners)) or any(f.get("method", "none") == "none" for f in found):
        return None
    return {"method": found[0]["method"], "class_owner": list(next(iter(owners)))}


def owner_targets(targets: torch.Tensor, class_owner: list[str], students: list[str]) -> torch.Tensor:
    """(N, S) one-hot: which of `students` (in routing order) owns each image's class; a class owned by
    a student that is not routed to gets no owner (all zeros)."""
    index = torch.tensor([students.index(o) if o in students else -1 for o in class_owner])
    owner = index[targets.long()]
    out = torch.zeros(len(targets), len(students))
    rows = (owner >= 0).nonzero().flatten()
    out[rows, owner[rows]] = 1.0
    return out


def preferred_routes(correct: torch.Tensor) -> torch.Tensor:
    """(N,) index of the cheapest correct student (columns are cheapest first), -1 where none is right."""
    first = correct.to(torch.uint8).argmax(1)  # argmax returns the first maximum
    return torch.where(correct.any(1), first, torch.full_like(first, -1))


def label_stats(correct: torch.Tensor, names: list[str]) -> dict:
    """How many images each routing outcome covers; exactly-one-right images are the ones routing decides."""
    right = correct.sum(1)
    one = right == 1
    return {
        "num_images": len(correct),
        "all_right": int((right == len(names)).sum()),
        "none_right": int((right == 0).sum()),
        "exactly_one_right": int(one.sum()),
        "only_right": {n: int((one & correct[:, i]).sum()) for i, n in enumerate(names)},
        "accuracy": {n: float(correct[:, i].float().mean()) if len(correct) else 0.0 for i, n in enumerate(names)},
        "oracle": float(correct.any(1).float().mean()) if len(correct) else 0.0,
    }


def make_labels(logits: torch.Tensor, targets: torch.Tensor, names: list[str], macs: list[int]) -> dict:
    """The labels file's content from (N, S, C) logits; students in route order (cheapest first)."""
    correct = logits.argmax(2) == targets[:, None]
    # each student's softmax probability of the true class: a graded "how right", where correctness
    # is its 0/1 sample; the selector's default training target
    true_prob = logits.float().softmax(2).gather(2, targets.long()[:, None, None].expand(-1, logits.shape[1], 1))
    return {
        "students": list(names),
        "macs": torch.tensor(macs, dtype=torch.long),
        "targets": targets.long(),
        "logits": logits.float(),
        "correct": correct,
        "true_prob": true_prob.squeeze(2),
        "route": preferred_routes(correct),
        "stats": label_stats(correct, names),
    }


def label_split(students: list[Student], data: DataBundle, split: str = "select", batch_size: int = 256,
                device="cpu", progress: bool = False) -> dict:
    if split not in ("select", "spare"):  # `test` is never read; `train` was trained on, its labels flatter
        raise MoskdError(f"selector labels come from `select` (and `spare`), never `{split}`")
    card = students[0].card  # the shared normalisation (load_students adapted the other students to it)
    loader = parts_loader(data, [(split, None)], mean=card["mean"], std=card["std"], batch_size=batch_size,
                          device=device)
    logits, targets = collect_logits([st.model for st in students], loader, f"labels ({split})", progress)
    return make_labels(logits, targets, [st.name for st in students], [st.macs for st in students])


def save_labels(labels: dict, path: str | Path) -> None:
    save_checkpoint(labels, path)  # atomic; plain tensors, strings and numbers: loads with weights_only




def describe(stats: dict, split: str = "select") -> str:
    only = ", ".join(f"{n} {c}" for n, c in stats["only_right"].items())
    acc = ", ".join(f"{n} {a:.4f}" for n, a in stats["accuracy"].items())
    return (f"{split} labels: {stats['num_images']} images; all right {stats['all_right']}, none right "
            f"{stats['none_right']}, exactly one right {stats['exactly_one_right']} ({only}); "
            f"accuracy {acc}; oracle {stats['oracle']:.4f}")
