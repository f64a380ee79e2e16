"""What `--teacher` names, read the way people save models: a moskd run or checkpoint, a weights
file (.pt/.pth state dict, .safetensors) with --teacher-arch, or an ONNX file; the teacher's own
preprocessing (--teacher-config, timm's pretrained_cfg keys) and class order (--teacher-classes).

Nothing here writes, and nothing here knows the run layout: moskd.teacher_import finds a
moskd run's teacher and turns what this module reads into RUN/teacher/.
"""
from __future__ import annotations

import json
import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from moskd.checkpoint import read_checkpoint_file
from moskd.errors import MoskdError
from moskd.ort import ort_session as onnx_session

IMAGENET_MEAN = [0.485, 0.456, 0.406]  # timm.data.IMAGENET_DEFAULT_MEAN / torchvision's weights' transforms
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGENET_INPUT = [3, 224, 224]
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
WRAPPERS = ("state_dict", "model", "module")  # the keys timm's load_state_dict looks under, outermost first
MOSKD_KEYS = ("model_kwargs",)  # ours, beside timm's: the architecture's constructor kwargs (e.g. stem)
SHOWN = 3  # mismatched tensors named in the one-line refusal


@dataclass
class TeacherRequest:
    """The --teacher* flags, as given."""
    source: str
    arch: str | None = None
    config: str | None = None
    classes: str | None = None


def kind_of(path: Path) -> str:
    """'moskd' (a run, a teacher folder, a moskd checkpoint), 'weights' or 'onnx'."""
    if path.is_dir():
        return "moskd"
    if not path.is_file():
        raise MoskdError(f"--teacher {path}: no such file or folder; pass a moskd run, a checkpoint, "
                         f"a weights file with --teacher-arch, or an .onnx file")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() == ".safetensors":
        return "weights"
    obj = read_checkpoint_file(path)
    return "moskd" if isinstance(obj, dict) and isinstance(obj.get("card"), dict) else "weights"


def unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved state dict, unwrapped as timm's load_state_dict does: the dict under
    'state_dict', 'model' or 'module' (DataParallel/DistributedDataParallel's 'module.' key prefix
    stripped)."""
    while isinstance(obj, dict) and not _all_tensors(obj):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
        raise MoskdError(f"{path}: holds no state dict (a dict of tensor names to tensors, possibly under "
                         f"'state_dict' or 'model'); save it with torch.save(model.state_dict(), PATH)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _all_tensors(d: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A .pt/.pth/.safetensors file's tensors, loaded without running code from it."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return unwrap_state_dict(load_file(str(path)), path)
        except SafetensorError as e:
            raise MoskdError(f"{path}: not a readable safetensors file ({str(e)[:120]})") from None
    return unwrap_state_dict(read_checkpoint_file(path), path)


def shape_text(t) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Every tensor of the model from the file and every tensor of the file used; else one line
    naming the first mismatched tensors with their shapes."""
    own = model.state_dict()
    wrong = [f"{k} file {shape_text(state[k])} vs model {shape_text(v)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    last = lambda k: k.endswith("num_batches_tracked")  # noqa: E731 - a counter, the least telling name
    missing = sorted((k for k in own if k not in state), key=last)
    extra = sorted((k for k in state if k not in own), key=last)
    if wrong or missing or extra:
        parts = ([f"shapes differ: {'; '.join(wrong[:SHOWN])}"] if wrong else []) \
            + ([f"missing from the file: {', '.join(missing[:SHOWN])}"] if missing else []) \
            + ([f"not in {arch}: {', '.join(extra[:SHOWN])}"] if extra else [])
        n = len(wrong) + len(missing) + len(extra)
        raise MoskdError(f"{path} does not fit --teacher-arch {arch} ({n} tensors: {'; '.join(parts)}); check "
                         f"--teacher-arch, and num_classes/input_size/model_kwargs in --teacher-config")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# ---------------------------------------------------------------- preprocessing


def read_config(path: str | None) -> dict:
    """--teacher-config: a JSON object of timm pretrained_cfg keys (plus model_kwargs); {} without one."""
    if not path:
        return {}
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise MoskdError(f"--teacher-config {path}: not a readable JSON file ({str(e)[:100]})") from None
    if not isinstance(cfg, dict):
        raise MoskdError(f"--teacher-config {path}: must be a JSON object (timm pretrained_cfg keys)")
    cfg = cfg.get("pretrained_cfg", cfg)  # timm's config.json nests it

    from timm.models import PretrainedCfg

    known = {f.name for f in dataclasses.fields(PretrainedCfg)} | set(MOSKD_KEYS)
    unknown = sorted(set(cfg) - known)
    if unknown:

        near = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise MoskdError(f"--teacher-config {path}: unknown key '{unknown[0]}'"
                         + (f" (did you mean '{near[0]}'?)" if near else "")
                         + "; use timm's pretrained_cfg keys input_size, mean, std, interpolation, num_classes")
    return cfg


def preprocessing(cfg: dict, where: str, onnx_input: list | None = None) -> dict:
    """The teacher's input: input_size [C, H, W], mean, std, interpolation. Missing keys take
    ImageNet's values (timm's and torchvision's defaults); an ONNX file's static input shape gives
    the size."""
    size = cfg.get("input_size") or onnx_input or IMAGENET_INPUT
    c = int(size[0]) if len(size) == 3 else 0
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ([0.5] * c, [0.5] * c)
    prep = {"input_size": [int(s) for s in size], "mean": [float(m) for m in cfg.get("mean", default_mean)],
            "std": [float(s) for s in cfg.get("std", default_std)],
            "interpolation": cfg.get("interpolation", "bilinear")}
    if len(prep["input_size"]) != 3 or min(prep["input_size"]) < 1:
        raise MoskdError(f"{where}: input_size {size} must be [channels, height, width]")
    if len(prep["mean"]) != c or len(prep["std"]) != c or min(prep["std"]) <= 0:
        raise MoskdError(f"{where}: mean and std need {c} values (std > 0), one per input channel")
    return prep


def onnx_signature(path: Path) -> tuple[list | None, int | None]:
    """(static [C, H, W] of the first input or None, static class count of the first output or None)."""
    try:
        sess = onnx_session(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise MoskdError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:120]})") from None
    shape = sess.get_inputs()[0].shape
    dims = shape[1:] if len(shape) == 4 else []
    out = sess.get_outputs()[0].shape
    classes = out[-1] if out and isinstance(out[-1], int) else None
    return ([int(d) for d in dims] if dims and all(isinstance(d, int) for d in dims) else None), classes


def read_class_order(path: str, dataset_classes: list[str], teacher_classes: int) -> list[int]:
    """--teacher-classes FILE: the teacher's class names in its output order (one a line, or a JSON
    list); returns, for each dataset class, the teacher output that holds it."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise MoskdError(f"--teacher-classes {path}: cannot read it ({e.strerror})") from None
    names = json.loads(text) if text.lstrip().startswith("[") else [ln.strip() for ln in text.splitlines()
                                                                      if ln.strip()]
    if len(names) != teacher_classes:
        raise MoskdError(f"--teacher-classes {path}: names {len(names)} classes, the teacher has {teacher_classes}; "
                         f"list every teacher output in order, one name a line")
    where = {str(n): i for i, n in enumerate(names)}
    absent = [c for c in dataset_classes if c not in where]
    if absent:
        raise MoskdError(f"--teacher-classes {path}: no teacher output for the dataset's class "
                         f"'{absent[0]}' ({len(absent)} missing); name each dataset class as the dataset does")
    return [where[c] for c in dataset_classes]


def onnx_macs(path: Path, input_size: list[int]) -> int:
    """Multiply-accumulates of one image through an ONNX classifier: its Conv, Gemm and MatMul nodes,
    with the shapes onnx's shape inference gives for a (1, C, H, W) input (moskd.profile counts a
    torch model's the same way: matmuls and convolutions only)."""

    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, [1, *input_size]):
        d.Clear()
        d.dim_value = int(v)
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        ins = [shapes.get(i) for i in node.input[:2]]
        if out is None or any(s is None for s in ins):
            continue
        if node.op_type == "Conv":  # every output element: (C_in / groups) * kh * kw weights
            macs += math.prod(out) * math.prod(ins[1][1:])
        elif node.op_type in ("Gemm", "MatMul"):  # every output element: one dot product of length K
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            macs += math.prod(out) * ins[0][-2 if transposed else -1]
    return int(macs)
