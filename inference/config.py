"""The inference command's settings (torch-free, so --help and config checks never load torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moskd.config import field


@dataclass
class InferenceConfig:
    run_dir: str = field("runs/digits", "run directory holding teacher/, students/ and selector/")
    bundle: Optional[str] = field(None, "predict from a deployment bundle (moskd export) instead of --run-dir",
                                  metavar="DIR")
    dataset: Optional[str] = field(None, "evaluate on this dataset (must be the run's; default: the run's)")
    split: Optional[str] = field(None, "evaluate the run on this split and write the report", choices=["test"])
    data_dir: Optional[str] = field(None, "where CIFAR files live (default: the run's)")
    download: bool = field(False, "download CIFAR through torchvision (needs network)")
    limit: Optional[int] = field(None, "evaluate on at most N images of the split")
    output: Optional[str] = field(None, "write one row per input to FILE.csv or FILE.jsonl, or to stdout "
                                        "with -", metavar="FILE")
    output_format: Optional[str] = field(None, "format of --output (default: its suffix; csv for -)",
                                         choices=["csv", "jsonl"])
    quiet: bool = field(False, "no table on stderr (failed inputs still get one line each)")
    batch_size: int = field(256, "images per forward pass")
    fast: str = field("fold+cl", "with --run-dir: CPU fast path, Conv+BN folding and channels_last "
                                 "(measured in benchmarks/bench_infer.py): eager | fold | fold+cl",
                      choices=["eager", "fold", "fold+cl"])
    invert: str = field("auto", "auto (digits: invert light-background images) | yes | no",
                        choices=["auto", "yes", "no"])
    device: str = field("auto", "auto | cpu | cuda | cuda:N")
