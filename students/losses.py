"""Distillation losses and the objectives the engine trains students on.

Hinton et al. (2015): loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)).
The T^2 factor keeps the soft term's gradient scale independent of T (its gradient shrinks as 1/T^2),
so alpha means the same thing at every temperature. KL uses reduction="batchmean", the true KL per
image (reduction="mean" would also divide by the class count).

Logit matching (Ba & Caruana, 2014) regresses the student's logits onto the teacher's:
loss = alpha * CE(s, y) + (1 - alpha) * MSE(s, t), MSE averaged over images and classes. No
temperature: raw logits are matched.

An objective has the engine's signature (logits, batch) -> loss with batch = (images, targets,
*extras). With the teacher cache the teacher's logits for the batch's views arrive as the last
extra; online, the teacher is run on batch[0] inside the objective.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moskd.engine import Objective
from moskd.precision import policy

KD_LOSSES = ("kl", "mse")


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def kd_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of raw logits (over images and classes)."""
    return F.mse_loss(student, teacher)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor, *,
                      alpha: float, temperature: float = 1.0, kd_loss: str = "kl",
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """alpha * CE(student, targets) + (1 - alpha) * soft term; teacher may be None only when alpha == 1."""
    if kd_loss not in KD_LOSSES:
        raise ValueError(f"kd_loss must be one of {KD_LOSSES}, got {kd_loss!r}")
    hard = F.cross_entropy(student, targets, label_smoothing=label_smoothing)
    if alpha >= 1.0:  # no soft term: do not even look at the teacher
        return hard
    teacher = teacher.to(student.dtype)  # fp16 cached logits compute in the student's precision
    soft = kd_kl(student, teacher, temperature) if kd_loss == "kl" else kd_mse(student, teacher)
    if alpha <= 0.0:  # pure distillation: the labels are not used
        return soft
    return alpha * hard + (1.0 - alpha) * soft


def cached_objective(alpha: float, temperature: float, kd_loss: str, label_smoothing: float = 0.0) -> Objective:
    """Distil from cached teacher logits: the loader appends them to the batch as its last extra."""

    def objective(logits: torch.Tensor, batch) -> torch.Tensor:
        return distillation_loss(logits, batch[-1], batch[1], alpha=alpha, temperature=temperature,
                                 kd_loss=kd_loss, label_smoothing=label_smoothing)

    return objective


def online_objective(teacher: nn.Module, alpha: float, temperature: float, kd_loss: str,
                     label_smoothing: float = 0.0, amp: bool = True) -> Objective:
    """Distil from the teacher run on the same augmented batch each step (eval mode, no autograd).

    The teacher follows the training precision policy (moskd.precision), as the student does.
    """
    teacher.eval()

    def objective(logits: torch.Tensor, batch) -> torch.Tensor:
        if alpha >= 1.0:  # the soft term has no weight: skip the teacher's forward pass
            return F.cross_entropy(logits, batch[1], label_smoothing=label_smoothing)
        prec = policy(batch[0].device, amp, training=True)
        with torch.inference_mode(), prec.autocast():
            t = teacher(prec.input(batch[0])).float()
        # inference tensors cannot be saved for backward; a clone outside inference_mode can
        t = t.clone()
        return distillation_loss(logits, t, batch[1], alpha=alpha, temperature=temperature,
                                 kd_loss=kd_loss, label_smoothing=label_smoothing)

    return objective
