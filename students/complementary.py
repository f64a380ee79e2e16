"""Complementary students: students trained to make different mistakes, so a router has a choice.

Methods (`StudentTrain --complementary METHOD`, `moskd pipeline --complementary METHOD`):

- none: today's independent distillation; every image weighs 1 for every student.
- clusters: specialists on confusable class clusters (Hinton, Vinyals & Dean 2015, section 5),
  computed once from the teacher. The teacher's softened predictions on `train` (softmax at the
  KD temperature, averaged per true class) give a class-by-class confusion matrix M; its symmetric
  part is the affinity of a spectral clustering of the classes into one cluster per owner
  student. The hardest cluster (lowest mean teacher probability of the true class) goes to the
  first owner (--owners; default DenseNet121, the strongest and dearest student), the next to
  the second. A student
  then weighs the images of the classes it owns 1 and every other image `--other-weight` (< 1):
  it still learns every class (a usable classifier on its own) but spends its capacity on its
  cluster. The selector learns which student owns an image (trainSelector --target owner).

The partition is written once, as JSON under the teacher's folder (RUN/teacher/partition-<method>.json),
so `StudentTrain --model 1` and `--model 2` can still run one at a time, in either order: the first
writes it, the second reads it. It is keyed by the teacher checkpoint's hash; a new teacher gets a
new partition.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def class_confusion(teacher_probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """M[i, j] = mean teacher probability of class j over images whose true class is i (rows sum to 1)."""
    m = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    m.index_add_(0, targets.long(), teacher_probs.double())
    counts = torch.bincount(targets.long(), minlength=num_classes).double().clamp_min(1)
    return (m / counts[:, None]).numpy()


def cluster_classes(confusion: np.ndarray, n_clusters: int, seed: int = 0) -> list[int]:
    """Cluster id per class, hardest cluster first: spectral clustering of the symmetric confusions."""
    from sklearn.cluster import SpectralClustering

    c = confusion.shape[0]
    if not 2 <= n_clusters <= c:
        raise ValueError(f"cannot split {c} classes into {n_clusters} clusters")
    affinity = (confusion + confusion.T) / 2
    np.fill_diagonal(affinity, 0.0)
    affinity += 1e-9  # a connected graph, so every class gets a cluster even with no confusions
    raw = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                             assign_labels="discretize").fit_predict(affinity)
    hardness = {k: float(np.mean(np.diag(confusion)[raw == k])) for k in set(raw.tolist())}
    order = sorted(hardness, key=lambda k: (hardness[k], k))  # lowest true-class probability first
    rank = {k: i for i, k in enumerate(order)}
    return [rank[k] for k in raw.tolist()]


def build_partition(teacher_logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                    owners: list[str], temperature: float, teacher_sha256: str,
                    class_names: list[str]) -> dict:
    """The `clusters` partition as a JSON-ready dict: class -> owner, with what it was made from."""
    probs = torch.softmax(teacher_logits.float() / temperature, dim=1)
    confusion = class_confusion(probs, targets, num_classes)
    cluster = cluster_classes(confusion, len(owners))
    return {
        "method": "clusters", "owners": list(owners), "class_owner": [owners[k] for k in cluster],
        "clusters": {o: [class_names[i] for i, k in enumerate(cluster) if k == j] for j, o in enumerate(owners)},
        "teacher_true_class_prob": [round(float(v), 4) for v in np.diag(confusion)],
        "temperature": temperature, "teacher_sha256": teacher_sha256,
    }


def load_partition(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def image_weights(targets: torch.Tensor, class_owner: list[str], student: str, other_weight: float) -> torch.Tensor:
    """(N,) loss weight of each image for `student`: 1 where it owns the image's class, else other_weight."""
    owned = torch.tensor([o == student for o in class_owner], dtype=torch.bool)
    return torch.where(owned[targets.long()], torch.tensor(1.0), torch.tensor(float(other_weight)))
