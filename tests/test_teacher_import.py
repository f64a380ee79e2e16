"""Your own teacher (issue 28): a teacher saved the ways people save models teaches a student as the
run's own checkpoint would; bad imports exit 2 with one line; an ImageNet-preprocessed teacher sees
its own input; teacherTrain --pretrained refuses a partial load unless told.

The teacher is a tiny registered CNN trained by teacherTrain for 8 epochs on 120 digits images
(about 80% on select); students distil from it on another slice (48 images), so every path also
converts between two normalisations.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import numpy as np
import torch

from moskd.checkpoint import load_checkpoint
from moskd.data import load_data
from moskd.models import build_model_from_checkpoint, create_model
from moskd.teacher_source import IMAGENET_MEAN, IMAGENET_STD, unwrap_state_dict
from students.cli import main as student_main
from teacher.cli import main as teacher_main

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "test_tiny_cnn"  # tests.conftest registers it
TEACHER_SLICE = ["--limit", "120", "--epochs", "8", "--batch-size", "16", "--lr", "0.01", "--warmup-epochs", "0",
                 "--device", "cpu"]
K = 2  # cached views per image
STUDENT_SLICE = ["--model", ARCH, "--limit", "48", "--epochs", "1", "--batch-size", "48", "--eval-batch-size", "48",
                 "--device", "cpu", "--no-amp", "--teacher-cache", str(K)]  # fp32: onnxruntime's precision too


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(its best.pt, its card, the model) of a teacher trained by teacherTrain."""
    run = tmp_path_factory.mktemp("teacher_run")
    teacher_main(["--run-dir", str(run), "--arch", ARCH, *TEACHER_SLICE])
    best = run / "teacher" / "best.pt"
    ckpt = load_checkpoint(best, role="teacher")
    return best, ckpt["card"], build_model_from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def teacher_config(trained, tmp_path_factory) -> Path:
    """--teacher-config for it: the preprocessing of its own data slice (timm pretrained_cfg keys)."""
    _, card, _ = trained
    path = tmp_path_factory.mktemp("cfg") / "teacher.json"
    path.write_text(json.dumps({"input_size": card["input_size"], "mean": card["mean"], "std": card["std"],
                                "num_classes": card["num_classes"], "model_kwargs": card["model_kwargs"]}))
    return path


def cached_logits(run: Path) -> torch.Tensor:
    """The teacher-output cache's fp16 logits rows (students.cache: memory-mapped outputs.bin, (N, K, C))."""
    rows = np.fromfile(run / "teacher" / "cache" / f"views-k{K}" / "outputs.bin", np.float16)
    return torch.from_numpy(rows.astype(np.float32)).view(-1, K, 10)


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory) -> torch.Tensor:
    """The cached teacher logits of a student distilled from the moskd checkpoint itself."""
    run = tmp_path_factory.mktemp("reference")
    student_main(["--run-dir", str(run), "--teacher", str(trained[0]), *STUDENT_SLICE])
    return cached_logits(run)


def save_as(form: str, model: torch.nn.Module, folder: Path) -> Path:
    state = model.state_dict()
    if form == "state_dict":
        torch.save(state, folder / "teacher.pt")
        return folder / "teacher.pt"
    if form == "module_prefixed":  # what DistributedDataParallel training scripts save
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, folder / "teacher.pth")
        return folder / "teacher.pth"
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "teacher.safetensors"))
        return folder / "teacher.safetensors"
    from inference.export import _export_onnx

    _export_onnx(model.eval(), torch.zeros(2, 1, 8, 8), folder / "teacher.onnx")
    return folder / "teacher.onnx"


@pytest.mark.parametrize("form,atol", [("state_dict", 1e-4), ("module_prefixed", 1e-4), ("safetensors", 1e-4),
                                       ("onnx", 1e-3)])
def test_an_imported_teacher_teaches_as_its_checkpoint_does(trained, teacher_config, reference, tmp_path, cli,
                                                            form, atol):
    source = save_as(form, trained[2], tmp_path)
    flags = ["--teacher-config", str(teacher_config)] + ([] if form == "onnx" else ["--teacher-arch", ARCH])
    run = tmp_path / "run"
    code, out, err = cli(student_main, ["--run-dir", str(run), "--teacher", str(source), *flags, *STUDENT_SLICE])
    assert code == 0, err
    assert "on select (" in out and "accuracy" in out and "ECE" in out  # scored before it taught
    got = cached_logits(run)
    assert got.shape == reference.shape and torch.allclose(got, reference, atol=atol, rtol=0)
    card = load_checkpoint(run / "students" / ARCH / "best.pt", role="student")["card"]["distillation"]
    from moskd.atomic import file_sha256

    assert card["teacher_sha256"] == file_sha256(source) and card["teacher_source"] == str(source.resolve())
    assert card["teacher_preprocessing"]["mean"] == pytest.approx(trained[1]["mean"])
    summary = json.loads((run / "teacher" / "summary.json").read_text())
    assert summary["select"]["accuracy"] > 0.5
    # a second student reuses the import and its cache
    code, out, err = cli(student_main, ["--run-dir", str(run), "--teacher", str(source), *flags, *STUDENT_SLICE,
                                        "--force"])
    assert code == 0, err
    assert "reused" in out and "computing" not in out


def test_unwrapping_follows_timm():
    t = torch.ones(2)
    assert unwrap_state_dict({"model": {"module.a": t}, "optimizer": {}}, Path("x")) == {"a": t}
    assert unwrap_state_dict({"state_dict": {"b": t}, "epoch": 1}, Path("x")) == {"b": t}


def refusal(cli, run: Path, argv: list[str]) -> str:
    """The one stderr line of a refused import, after checking nothing was written."""
    code, out, err = cli(student_main, ["--run-dir", str(run), *argv, *STUDENT_SLICE])
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert not (run / "teacher").exists()
    return err


def test_a_wrong_arch_names_the_first_mismatched_tensors(trained, teacher_config, tmp_path, cli):
    source = save_as("state_dict", trained[2], tmp_path)
    cfg = json.loads(teacher_config.read_text()) | {"model_kwargs": {}}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    err = refusal(cli, tmp_path / "run", ["--teacher", str(source), "--teacher-arch", "test_small_cnn",
                                          "--teacher-config", str(tmp_path / "c.json")])
    assert "does not fit --teacher-arch test_small_cnn" in err and "file (32, 1, 3, 3) vs model (16, 1, 3, 3)" in err


def test_a_wrong_class_count_is_refused(trained, teacher_config, tmp_path, cli):
    twelve = create_model(ARCH, 12, 1)
    source = tmp_path / "twelve.pt"
    torch.save(twelve.state_dict(), source)
    cfg = json.loads(teacher_config.read_text()) | {"num_classes": 12}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    err = refusal(cli, tmp_path / "run", ["--teacher", str(source), "--teacher-arch", ARCH,
                                          "--teacher-config", str(tmp_path / "c.json")])
    assert "the teacher has 12 classes, digits has 10" in err and "--teacher-classes" in err


def test_a_shuffled_class_order_scores_at_chance_and_is_refused(trained, teacher_config, tmp_path, cli):
    source = save_as("state_dict", trained[2], tmp_path)
    names = load_data("digits", limit=48).class_names
    rotated = names[1:] + names[:1]  # every class answered as its neighbour
    (tmp_path / "classes.txt").write_text("\n".join(rotated) + "\n")
    err = refusal(cli, tmp_path / "run", ["--teacher", str(source), "--teacher-arch", ARCH, "--teacher-config",
                                          str(teacher_config), "--teacher-classes", str(tmp_path / "classes.txt")])
    assert "below --teacher-min-accuracy" in err
    # the right order, written the same way, passes
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    code, out, err = cli(student_main, ["--run-dir", str(tmp_path / "ok"), "--teacher", str(source), "--teacher-arch",
                                        ARCH, "--teacher-config", str(teacher_config), "--teacher-classes",
                                        str(tmp_path / "classes.txt"), *STUDENT_SLICE])
    assert code == 0, err


def test_an_imagenet_teacher_sees_its_own_size_and_normalisation(tmp_path, cli, monkeypatch):
    """resnet18 by torchvision's name, no --teacher-config: 3x224x224 inputs, ImageNet mean/std."""
    import torchvision

    torch.manual_seed(0)
    source = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), source)
    seen: list[torch.Tensor] = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach().float().clone())
        if isinstance(m, torchvision.models.ResNet) and args[0].device.type != "meta" else None)
    try:
        code, out, err = cli(student_main, ["--run-dir", str(tmp_path / "run"), "--teacher", str(source),
                                            "--teacher-arch", "resnet18", "--teacher-min-accuracy", "0",
                                            *STUDENT_SLICE[:-1], "1"])  # one cached view: 224x224 costs
    finally:
        hook.remove()
    assert code == 0, err
    assert seen and all(x.shape[1:] == (3, 224, 224) for x in seen)
    x = torch.cat(seen)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = x * std + mean  # undone with the teacher's own normalisation: back in [0, 1], gray
    assert pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5) and torch.allclose(pixels[:, 0], pixels[:, 2],
                                                                                      atol=1e-5)
    data = load_data("digits", limit=48)
    images = torch.cat([data.splits[s].images for s in ("train", "select")]).float() / 255
    assert pixels.mean().item() == pytest.approx(images.mean().item(), abs=0.03)  # upsampling keeps the mean


def test_pretrained_counts_and_refuses_a_partial_load(tmp_path, cli):
    source = tmp_path / "w.pt"
    torch.save(create_model(ARCH, 12, 1).state_dict(), source)  # another head: fc.weight and fc.bias differ
    argv = ["--run-dir", str(tmp_path / "run"), "--arch", ARCH, "--pretrained", str(source), "--limit", "24",
            "--epochs", "1", "--device", "cpu"]
    code, out, err = cli(teacher_main, argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "partial load, 2 of" in err and "fc.weight file (12, 32) vs model (10, 32)" in err
    assert "--pretrained-partial" in err and not (tmp_path / "run" / "teacher" / "best.pt").exists()
    code, out, err = cli(teacher_main, [*argv, "--pretrained-partial"])
    assert code == 0, err
    assert "skipped 2" in out


def test_an_onnx_teacher_exports_as_one_program_with_its_conversion(trained, tmp_path):
    """The bundle's ONNX teacher: input conversion (another size and normalisation), the teacher's own
    graph as it is, class order; onnxruntime on the joined file answers as the eager wrapper does."""
    from moskd.ort import ort_session
    from moskd.teacher_export import export_onnx_teacher
    from moskd.teacher_input import ClassOrder, OnnxTeacher, TeacherInput

    source = save_as("onnx", trained[2], tmp_path)
    data = {"input_size": [1, 6, 6], "mean": [0.2], "std": [0.4]}
    order = list(range(9, -1, -1))
    model = TeacherInput(ClassOrder(OnnxTeacher(source, 10), order), data, trained[1]).eval()
    x = torch.randn(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    export_onnx_teacher(model, x[:2], tmp_path / "bundle_teacher.onnx")
    sess = ort_session(tmp_path / "bundle_teacher.onnx")
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.inference_mode():
        want = model(x)
    assert torch.allclose(got, want, atol=1e-4)
    bare = trained[2].eval()
    with torch.inference_mode():  # and it is the teacher's answer: the torch model on the converted input, reordered
        assert torch.allclose(want, bare(model.convert(x))[:, order], atol=1e-4)
    import onnx

    from inference.quantize import quantize_file

    joined = onnx.load(str(tmp_path / "bundle_teacher.onnx"))
    assert [o.domain for o in joined.opset_import].count("") == 1  # one entry per domain: the quantizer needs it
    q = quantize_file(tmp_path / "bundle_teacher.onnx", tmp_path / "bundle_teacher.int8.onnx", x.numpy())
    sess = ort_session(q)
    got8 = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert got8.shape == want.shape and (got8.argmax(1) == want.argmax(1)).float().mean() >= 0.6


def test_torchvision_weights_fit_a_seed_architecture_by_default(tmp_path):
    """--teacher-arch resnet50 with no config: torchvision's own stem and ImageNet's preprocessing."""
    import torchvision

    from moskd.teacher_import import _teacher_and_card
    from moskd.teacher_source import TeacherRequest

    source = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(num_classes=10).state_dict(), source)
    model, card, state = _teacher_and_card(TeacherRequest(str(source), "resnet50"), source, load_data("digits", limit=12))
    assert card["model_kwargs"] == {"stem": "imagenet"} and card["input_size"] == [3, 224, 224]
    assert card["mean"] == IMAGENET_MEAN and card["std"] == IMAGENET_STD and len(state) == len(torch.load(source))


def test_the_check_computes_ece_as_the_report_does():
    import numpy as np

    from inference.curves import ece as report_ece
    from students.teacher_check import ece

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(300, 10)) * 3, rng.integers(0, 10, 300)
    assert ece(logits, labels) == pytest.approx(report_ece(logits, labels), abs=1e-12)


def test_an_onnx_teacher_counts_its_graphs_weights(trained, tmp_path):
    # its state dict is empty: the compression table would read 0 parameters and 0 bytes
    import onnx

    from moskd.profile import count_params, model_cost, weights_bytes
    from moskd.teacher_input import ClassOrder, OnnxTeacher

    file = save_as("onnx", trained[2], tmp_path)
    want = sum(int(np.prod(t.dims)) for t in onnx.load(str(file)).graph.initializer)
    teacher = ClassOrder(OnnxTeacher(file, 10), list(range(10)))
    assert want > 0 and count_params(teacher) == want
    assert file.stat().st_size < weights_bytes(teacher) < file.stat().st_size + 2048  # the file, plus the wrapper's index
    cost = model_cost(teacher, [1, 8, 8])
    assert cost["params"] == want and cost["bytes"] == weights_bytes(teacher)
