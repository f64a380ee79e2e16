"""The objectives students train on: labels plus a distillation term, optionally weighted per image.

loss = alpha * CE(s, y) + (1 - alpha) * KD(s, t), where KD is one of KD_LOSSES below
(kl: Hinton et al. 2015 soft targets with the T^2 factor; mse: Ba & Caruana 2014 logit matching;
a new one is a function of (student logits, teacher logits, T) -> one value per image, and an entry).
Both terms are computed per image and averaged with weights w: sum(w * l) / sum(w). Without
weights this is the plain batch mean (KL's "batchmean"); complementary students
(students.complementary) weigh the images their student owns higher.

Each objective owns its forward pass (moskd.engine.Objective) and returns its parts, "ce" and
"kd", beside the total. Batches are (images, targets, *extras): with the teacher cache the
teacher's logits for the batch's views arrive as the last extra; online, the teacher is run on
batch[0] inside the objective; per-image weights, when used, come as the first extra.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moskd.engine import LossOutput, Objective
from moskd.precision import Precision


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) soft targets: T^2 * KL(softmax(t/T) || softmax(s/T)) per image.

    The T^2 factor keeps the soft term's gradient scale independent of T (its gradient shrinks as
    1/T^2), so alpha means the same thing at every temperature. Summed over classes, one value per
    image: the batch mean of these is KL's reduction="batchmean", the true KL per image
    (reduction="mean" would also divide by the class count)."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1) * temperature**2


def kd_mse(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logit matching (Ba & Caruana, 2014): mean squared difference of the raw logits over classes,
    one value per image; no temperature."""
    return (student - teacher).pow(2).mean(1)


# --kd-loss NAME -> (student logits (B, C), teacher logits (B, C), temperature) -> per-image loss (B,)
KD_LOSSES = {"kl": kd_kl, "mse": kd_mse}


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor, *,
                      alpha: float, temperature: float = 1.0, kd_loss: str = "kl",
                      label_smoothing: float = 0.0, weights: torch.Tensor | None = None) -> dict:
    """{"loss": alpha * CE + (1 - alpha) * KD, "ce": CE, "kd": KD}, each a weighted mean over images.

    teacher may be None only when alpha == 1 (then "kd" is absent); at alpha == 0 the labels are not used.
    """
    kd_fn = KD_LOSSES[kd_loss]
    parts = {}
    if alpha > 0.0:
        hard = F.cross_entropy(student, targets, label_smoothing=label_smoothing, reduction="none")
        parts["ce"] = weighted_mean(hard, weights)
    if alpha >= 1.0:  # no soft term: do not even look at the teacher
        return {"loss": parts["ce"], **parts}
    teacher = teacher.to(student.dtype)  # fp16 cached logits compute in the student's precision
    parts["kd"] = weighted_mean(kd_fn(student, teacher, temperature), weights)
    if alpha <= 0.0:
        return {"loss": parts["kd"], **parts}
    return {"loss": alpha * parts["ce"] + (1.0 - alpha) * parts["kd"], **parts}


def _weights(batch, weighted: bool) -> torch.Tensor | None:
    return batch[2] if weighted else None


def cached_objective(alpha: float, temperature: float, kd_loss: str, label_smoothing: float = 0.0,
                     weighted: bool = False) -> Objective:
    """Distil from cached teacher logits: the loader appends them to the batch as its last extra."""

    def objective(model: nn.Module, batch, prec: Precision) -> LossOutput:
        logits = prec.forward(model, batch[0])
        return LossOutput(logits, distillation_loss(
            logits, batch[-1], batch[1], alpha=alpha, temperature=temperature, kd_loss=kd_loss,
            label_smoothing=label_smoothing, weights=_weights(batch, weighted)))

    return objective


def online_objective(teacher: nn.Module, alpha: float, temperature: float, kd_loss: str,
                     label_smoothing: float = 0.0, weighted: bool = False) -> Objective:
    """Distil from the teacher run on the same augmented batch each step (eval mode, no autograd),
    under the same precision policy as the student."""
    teacher.eval()

    def objective(model: nn.Module, batch, prec: Precision) -> LossOutput:
        logits = prec.forward(model, batch[0])
        t = None
        if alpha < 1.0:  # the soft term has weight: run the teacher
            with torch.inference_mode():
                t = prec.forward(teacher, batch[0])
            t = t.clone()  # inference tensors cannot be saved for backward; a clone outside inference_mode can
        return LossOutput(logits, distillation_loss(
            logits, t, batch[1], alpha=alpha, temperature=temperature, kd_loss=kd_loss,
            label_smoothing=label_smoothing, weights=_weights(batch, weighted)))

    return objective


def label_objective(label_smoothing: float = 0.0) -> Objective:
    """Labels only (the no-teacher baseline)."""
    def objective(model: nn.Module, batch, prec: Precision) -> LossOutput:
        logits = prec.forward(model, batch[0])
        ce = F.cross_entropy(logits, batch[1], label_smoothing=label_smoothing)
        return LossOutput(logits, {"loss": ce, "ce": ce})

    return objective
