"""An imported ONNX teacher in an exported bundle (inference/export.py calls these two).

ONNX bundle: the teacher's own .onnx graph, as it is, between two small graphs torch exports: the
input conversion before it (moskd.teacher_input.TeacherInput: the bundle's batch to the teacher's
size and normalisation) and the class order after it (ClassOrder); either is left out when it is
the identity. onnx.compose joins the three into one program.

Torch bundle (torch.export): an ONNX graph has no torch program, so the bundle routes without the
teacher (the selector alone) and says so in one line.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

from moskd.atomic import atomic_write
from moskd.errors import MoskdError
from moskd.teacher_input import ClassOrder, OnnxTeacher, TeacherInput, find_onnx


class _Convert(nn.Module):
    def __init__(self, wrapper: TeacherInput):
        super().__init__()
        self.wrapper = wrapper

    def forward(self, x):
        return self.wrapper.convert(x)


class _Order(nn.Module):
    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.clone())

    def forward(self, y):
        return y.index_select(1, self.index)


def _parts(model: nn.Module) -> tuple[nn.Module | None, OnnxTeacher, nn.Module | None]:
    """(input conversion or None, the ONNX teacher, class order or None) of a wrapped ONNX teacher."""
    pre = post = None
    if isinstance(model, TeacherInput):
        pre, model = _Convert(model), model.inner
    if isinstance(model, ClassOrder):
        post, model = _Order(model.index), model.inner
    if not isinstance(model, OnnxTeacher):
        raise MoskdError("the ONNX teacher is wrapped in an unexpected way; import it again")
    return pre, model, post


def _torch_graph(module: nn.Module, example: torch.Tensor):
    """`module` as an ONNX ModelProto with a dynamic batch, input 'x', output 'y'."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step on stdout
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                    input_names=["x"], output_names=["y"], verbose=False)
    return program.model_proto


def _join(first, second, prefix: str):
    """`first`'s output into `second`'s input, as one model (opset and IR version of `first`)."""
    from onnx import compose, helper, version_converter

    opset = next(o.version for o in first.opset_import if o.domain in ("", "ai.onnx"))
    if next((o.version for o in second.opset_import if o.domain in ("", "ai.onnx")), opset) != opset:
        second = version_converter.convert_version(second, opset)
    second = compose.add_prefix(second, prefix)
    first.ir_version = second.ir_version = max(first.ir_version, second.ir_version)
    joined = compose.merge_models(first, second, io_map=[(first.graph.output[0].name, second.graph.input[0].name)])
    # merge_models lists each part's opsets: one entry per domain ("ai.onnx" is ""), or onnxruntime's
    # quantizer refuses the file ("Failed to find proper ai.onnx domain") and the teacher stays fp32
    versions: dict[str, int] = {}
    for o in joined.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        versions[domain] = max(versions.get(domain, 0), o.version)
    del joined.opset_import[:]
    joined.opset_import.extend(helper.make_opsetid(d, v) for d, v in versions.items())
    return joined


def export_onnx_teacher(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """One ONNX program: the bundle's batch in, the teacher's logits in the dataset's class order out."""
    import onnx

    pre, teacher, post = _parts(model)
    try:
        graph = onnx.load(teacher.path)
        if pre is not None:
            graph = _join(_torch_graph(pre, example), graph, "teacher/")
        if post is not None:
            with torch.inference_mode():
                logits = teacher(pre(example) if pre is not None else example)
            graph = _join(graph, _torch_graph(post, logits), "order/")
        atomic_write(path, lambda f: f.write(graph.SerializeToString()))
    except MoskdError:
        raise
    except Exception as e:  # noqa: BLE001 - onnx raises many types; one line names the step's failure
        raise MoskdError(f"the imported ONNX teacher {teacher.path} could not be joined with its input conversion "
                         f"({str(e).splitlines()[0][:120]}); export with --format torch to route without it") from None


def is_onnx_teacher(model: nn.Module | None) -> bool:
    return model is not None and find_onnx(model) is not None
