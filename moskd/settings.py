"""The settings every training stage shares: the data (DataConfig) and the training recipe
(TrainConfig). Plain dataclasses that import no torch, so a command's --help and its config checks
never load it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moskd.config import field
from moskd.values import SCHEDULERS, timm_optimizers


@dataclass
class DataConfig:
    run_dir: str = field("runs/digits", "run directory shared by all stages of one experiment")
    dataset: str = field("digits", "digits (bundled, offline) | fashion-mnist | cifar10 | cifar100 | folder:PATH")
    data_dir: str = field("data", "where fashion-mnist (the four official .gz files, flat or torchvision's "
                                  "layout) and CIFAR live or are downloaded to")
    download: bool = field(False, "download fashion-mnist/CIFAR through torchvision (needs network)")
    split_seed: int = field(0, "seed of the train/select/test split (independent of --seed)", range="[0,4294967294]")
    select_fraction: float = field(0.2, "share of the training set held out as `select` (0..1)", range="(0,1)")
    test_fraction: float = field(0.2, "share held out as `test` when the dataset has no test split (0..1)", range="(0,1)")
    limit: Optional[int] = field(None, "use at most N images per split (smoke runs and tests)", range=">=1")
    train_limit: Optional[int] = field(None, "use at most N `train` images; select and test stay whole, and the rest "
                                                  "of the training pool is the split `spare`", range=">=1")
    image_size: Optional[int] = field(None, "resize every image to N x N pixels (default: the dataset's "
                                            "own size; folder: the most common size of a sample of its files)",
                                      range=">=1")
    max_ram: Optional[float] = field(None, "GiB a folder's decoded images may take in memory; a folder over it, "
                                           "or at 64 px and above, is streamed from its files (default: a "
                                           "quarter of this machine's memory)", range=">=0")
    workers: int = field(0, "DataLoader worker processes decoding a streamed folder's files (0: in the "
                            "training process)", range=">=0")
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
    seed: int = field(0, "seed for initialisation, shuffling and augmentation", range=">=0")


@dataclass
class TrainConfig(DataConfig):
    epochs: int = field(15, "training epochs", range=">=1")
    batch_size: int = field(64, "images per step (per process under torchrun)", range=">=1")
    eval_batch_size: int = field(256, "images per evaluation step", range=">=1")
    lr: float = field(2e-3, "peak learning rate (after warm-up)", range=">0")
    optimizer: str = field("adamw", "adamw | adam | sgd (Nesterov momentum) | momentum, or any timm optimizer",
                           choices=timm_optimizers, ignore_case=True)
    scheduler: str = field("cosine", "cosine | step | multistep | linear | constant (per-step updates)",
                           choices=SCHEDULERS)
    lr_milestones: list[int] = field([], "epochs at which `multistep` multiplies the lr by --lr-decay", range=">=0")
    lr_decay: float = field(0.1, "factor for step/multistep decay", range="(0,1]")
    warmup_epochs: float = field(1, "epochs of linear warm-up from lr/100 (fractions allowed: 0.5 = half an epoch)", range=">=0")
    min_lr: float = field(0.0, "floor of the cosine/linear schedule", range=">=0")
    weight_decay: float = field(0.05, "weight decay (decoupled for adamw; not on biases and norms)", range=">=0")
    momentum: float = field(0.9, "SGD momentum", range="[0,1)")
    label_smoothing: float = field(0.0, "label smoothing of the cross-entropy term (0..1)", range="[0,1)")
    ema_decay: float = field(0.0, "EMA of weights, per step (0 = off; e.g. 0.999)", range="[0,1)")
    compile: bool = field(False, "torch.compile the model (CUDA: faster after warm-up)")
    amp: bool = field(True, "bf16 autocast on CUDA, and for training on CPUs with native bf16 "
                            "(moskd.precision)")
    resume: bool = field(False, "continue the run in this stage's folder from last.pt")
    force: bool = field(False, "start over even if this stage's folder already holds a run")
    keep_last: str = field("yes", "keep last.pt (optimizer state, for --resume) after the stage has finished",
                           choices=["yes", "no"])
