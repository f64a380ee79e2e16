"""Logit matching (Ba & Caruana, 2014): the student's raw logits regressed onto the teacher's.

Mean squared difference over classes, one value per image; no temperature (raw logits are matched).
"""
import torch

from students.kd import register


@register("mse")
def kd_mse(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    return (student - teacher).pow(2).mean(1)
