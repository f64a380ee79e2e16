"""Hinton et al. (2015) soft targets: T^2 * KL(softmax(t/T) || softmax(s/T)) per image.

The T^2 factor keeps the soft term's gradient scale independent of T (its gradient shrinks as
1/T^2), so alpha means the same thing at every temperature. Summed over classes, one value per
image: the batch mean of these is KL's reduction="batchmean", the true KL per image
(reduction="mean" would also divide by the class count).
"""
import torch
import torch.nn.functional as F

from students.kd import register


@register("kl")
def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1) * temperature**2
