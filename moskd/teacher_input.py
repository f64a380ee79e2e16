"""The one place a student's batch becomes a teacher's input, and the wrappers an imported teacher
runs in (moskd.teacher_source writes them into RUN/teacher; moskd.loaded.load_teacher builds them).

Every consumer of a teacher (the teacher-logit cache, the online teacher, the complementary
partition, the report, the router's escalation, export) gets it through load_teacher, so every one
of them feeds it through `TeacherInput`:

    batch normalised with the data's mean/std (C, H, W)
      -> pixels in [0, 1]                       (undo the data's normalisation)
      -> the teacher's channels                 (a grayscale channel replicated for an RGB teacher)
      -> the teacher's size                     (resized with its interpolation)
      -> the teacher's normalisation            (its own mean/std)

When channels and size already agree the four steps collapse into one affine map, the same
arithmetic moskd.models.Renormalized does, and when the normalisation agrees too there is no
wrapper at all: a teacher this run trained sees exactly what it saw before (bit-identical).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moskd.models import create_model, same_normalisation
from moskd.errors import MoskdError
from moskd.teacher_source import onnx_session

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights: RGB data for a one-channel teacher


def _column(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values]).view(1, -1, 1, 1)


class TeacherInput(nn.Module):
    """`inner` (a teacher with its own preprocessing, `teacher`) fed batches preprocessed per `data`.

    Both are card-like dicts: input_size [C, H, W], mean, std; `teacher` may name `interpolation`.
    """

    def __init__(self, inner: nn.Module, data: dict, teacher: dict):
        super().__init__()
        self.inner = inner
        self.size = tuple(int(s) for s in teacher["input_size"][1:])
        self.resize = self.size != tuple(int(s) for s in data["input_size"][1:])
        self.interpolation = teacher.get("interpolation", "bilinear")
        if self.interpolation not in INTERPOLATIONS:
            raise MoskdError(f"teacher interpolation '{self.interpolation}': choose one of {', '.join(INTERPOLATIONS)}")
        c_in, c_out = int(data["input_size"][0]), int(teacher["input_size"][0])
        self.channels = _channel_step(c_in, c_out)
        d_mean, d_std, t_mean, t_std = (_column(c[k]) for c, k in ((data, "mean"), (data, "std"),
                                                                  (teacher, "mean"), (teacher, "std")))
        if self.channels is None and not self.resize:  # one affine step, as models.Renormalized does
            self.register_buffer("scale", d_std / t_std)
            self.register_buffer("shift", (d_mean - t_mean) / t_std)
        else:
            self.register_buffer("d_mean", d_mean)
            self.register_buffer("d_std", d_std)
            self.register_buffer("t_mean", t_mean)
            self.register_buffer("t_std", t_std)

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's input for batch x (the data's normalisation, the data's size)."""
        if hasattr(self, "scale"):
            return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        pixels = x * self.d_std.to(x.dtype) + self.d_mean.to(x.dtype)  # [0, 1]
        if self.channels == "replicate":
            pixels = pixels.expand(-1, self.t_mean.shape[1], -1, -1)
        elif self.channels == "luma":
            pixels = (pixels * torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.resize:
            smooth = self.interpolation in ("bilinear", "bicubic")
            pixels = F.interpolate(pixels, size=self.size, mode=self.interpolation,
                                   align_corners=False if smooth else None,
                                   antialias=smooth and self.size[0] < pixels.shape[-2])
        return (pixels - self.t_mean.to(x.dtype)) / self.t_std.to(x.dtype)

    def forward(self, x):
        return self.inner(self.convert(x))


def _channel_step(c_in: int, c_out: int) -> str | None:
    if c_in == c_out:
        return None
    if c_in == 1:
        return "replicate"
    if (c_in, c_out) == (3, 1):
        return "luma"
    raise MoskdError(f"the teacher takes {c_out}-channel inputs and the data has {c_in}; "
                     f"give the teacher's input_size in --teacher-config")


def same_preprocessing(data: dict, teacher: dict) -> bool:
    """Whether a teacher preprocessed per `teacher` takes the data's batches as they are."""

    return list(data["input_size"]) == list(teacher["input_size"]) and same_normalisation(teacher, data)


def teacher_input(model: nn.Module, data: dict, teacher: dict) -> nn.Module:
    """`model` itself when its preprocessing is the data's, else wrapped in TeacherInput."""
    if same_preprocessing(data, teacher):
        return model
    return TeacherInput(model, data, teacher)


class ClassOrder(nn.Module):
    """A teacher's logits reordered (and narrowed) to the dataset's classes: out[:, j] = inner[:, index[j]]."""

    def __init__(self, inner: nn.Module, index: list[int]):
        super().__init__()
        self.inner = inner
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))

    def forward(self, x):
        return self.inner(x).index_select(1, self.index)


class OnnxTeacher(nn.Module):
    """An ONNX classifier run through onnxruntime (CPU), as a frozen module: float32 in, logits out.

    The session is opened on the first forward and dropped when copied or pickled (Ray), so the
    module travels as its file path. On the meta device (moskd.profile.count_macs) it stands in for
    its graph with one matmul of `macs` multiply-accumulates per image (counted from the ONNX graph
    at import, moskd.teacher_source.onnx_macs), so the teacher's cost reads as a torch teacher's.
    """

    def __init__(self, path: str | Path, num_classes: int, macs: int = 0):
        super().__init__()
        self.path, self.num_classes, self.macs = str(path), int(num_classes), int(macs)
        self._session = None

    def session(self):
        if self._session is None:
            self._session = onnx_session(self.path)
        return self._session

    def forward(self, x):
        if x.device.type == "meta":  # counted, not run: one (B, macs) @ (macs, 1) matmul
            torch.empty(len(x), max(self.macs, 1), device="meta") @ torch.empty(max(self.macs, 1), 1, device="meta")
            return torch.empty(len(x), self.num_classes, device="meta", dtype=x.dtype)
        sess = self.session()
        feed = {sess.get_inputs()[0].name: x.detach().float().cpu().contiguous().numpy()}
        out = torch.from_numpy(sess.run(None, feed)[0])
        return out.to(device=x.device, dtype=x.dtype)

    def graph_weights(self) -> tuple[int, int]:
        """(parameters, bytes) for moskd.profile: the graph's initializer elements, and the file's size
        (the file holds the weights; its state dict is empty)."""
        import onnx

        graph = onnx.load(self.path).graph
        return sum(math.prod(t.dims) for t in graph.initializer), Path(self.path).stat().st_size

    def __getstate__(self):
        return {**self.__dict__, "_session": None}

    def __deepcopy__(self, memo):
        return OnnxTeacher(self.path, self.num_classes, self.macs)


def find_onnx(model: nn.Module) -> OnnxTeacher | None:
    """The ONNX teacher inside a wrapped model, if it is one."""
    return next((m for m in model.modules() if isinstance(m, OnnxTeacher)), None)


def build_teacher(ckpt: dict, path: Path) -> nn.Module:
    """The model an imported teacher's checkpoint (at `path`) describes, in eval mode, its outputs in
    the dataset's class order. Its input is the teacher's own (moskd.teacher_input converts)."""

    card = ckpt["card"]
    own = int(card["teacher_num_classes"])
    if card.get("format") == "onnx":
        file = path.parent / card["onnx_file"]
        if not file.is_file():
            raise MoskdError(f"{file} not found beside {path}; import the ONNX teacher again (--teacher FILE.onnx)")
        model: nn.Module = OnnxTeacher(file, own, card.get("teacher_macs") or 0)
    else:
        model = create_model(card["arch"], num_classes=own, in_chans=card["in_chans"], **card.get("model_kwargs", {}))
        model.load_state_dict(ckpt["model"])
    index = card.get("class_index")
    if index is not None and list(index) != list(range(own)):
        model = ClassOrder(model, list(index))
    return model.eval()
