"""Save a moskd teacher checkpoint the ways other tools save models, for `--teacher` / `--teacher-from`:
a safetensors state dict, an ONNX file, and the --teacher-config JSON of its preprocessing.

    python docs/results/imported-teacher/make_sources.py RUN/teacher/best.pt OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from inference.export import _export_onnx
from moskd.checkpoint import load_checkpoint
from moskd.models import build_model_from_checkpoint

source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
ckpt = load_checkpoint(source, role="teacher")
card, model = ckpt["card"], build_model_from_checkpoint(ckpt).eval()
save_file(model.state_dict(), str(out / "teacher.safetensors"))
_export_onnx(model, torch.zeros(2, *card["input_size"]), out / "teacher.onnx")
config = {k: card[k] for k in ("input_size", "mean", "std", "num_classes", "model_kwargs")}
(out / "teacher.json").write_text(json.dumps({**config, "interpolation": "bilinear"}, indent=1) + "\n")
print(f"wrote {out}/teacher.safetensors, teacher.onnx, teacher.json")
