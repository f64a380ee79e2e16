"""Teacher outputs: the memory-mapped cache equals the online teacher on the same views (in-memory
shifts and streamed crops), top-K keeps the right probability mass, the files take the bytes the
docs state, and StudentTrain distils from a streamed folder through the cache with --teacher-topk."""
import json

import numpy as np
import pytest
import torch

from moskd.data import load_data
from moskd.loader import make_loader
from moskd.models import create_model
from moskd.runtime import Runtime
from students.cache import bytes_per_view, cache_key, to_rows, topk_logits
from students.teacher_outputs import load_or_build
from teacher.cli import main as teacher_main
from students.cli import main as student_main
from tests.test_streaming import make_folder

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Runtime(torch.device("cpu"))


def teacher_file(tmp_path, in_chans=3, classes=3):
    torch.manual_seed(0)
    teacher = create_model("test_tiny_cnn", classes, in_chans).eval()
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)  # only its sha256 keys the cache here
    return teacher, path


@pytest.mark.parametrize("topk", [2, 5, 7])
def test_top_k_rows_keep_the_teachers_top_k_mass_and_spread_the_rest(topk):
    logits = torch.randn(64, 7) * 3
    probs = logits.softmax(1)
    rebuilt = topk_logits(to_rows(logits, topk), 7).softmax(1)
    top_p, top_c = probs.topk(topk, 1)
    assert torch.allclose(rebuilt.gather(1, top_c), top_p, atol=2e-3)  # fp16 probabilities
    assert torch.allclose(rebuilt.sum(1), torch.ones(64), atol=1e-5)
    rest = torch.ones_like(probs, dtype=torch.bool).scatter_(1, top_c, False)
    if topk < 7:
        others = rebuilt[rest].view(64, -1)
        assert torch.allclose(others, (1 - top_p.sum(1, keepdim=True)).expand_as(others) / (7 - topk), atol=2e-3)
    # tempered, the rebuilt distribution is the stored one raised to 1/T: what the KD term sees
    t = 4.0
    assert torch.allclose((rebuilt.log() / t).softmax(1), (topk_logits(to_rows(logits, topk), 7) / t).softmax(1))


def test_bytes_per_image_per_view_as_the_docs_state():
    assert bytes_per_view(10) == 2 * 10 + 6 and bytes_per_view(1000) == 2 * 1000 + 6
    assert bytes_per_view(1000, topk=5) == 4 * 5 + 6 and bytes_per_view(10, crops=True) == 20 + 20


def test_cached_crop_views_of_a_streamed_folder_equal_the_online_teacher(tmp_path):
    folder = make_folder(tmp_path / "f", per_class=4, size=(70, 90))
    data = load_data(f"folder:{folder}", image_size=64, select_fraction=0.25, test_fraction=0.25)
    assert data.backend == "stream"
    teacher, tpath = teacher_file(tmp_path)
    for topk in (0, 2):
        cache = tmp_path / f"cache{topk}"
        views = load_or_build(cache, cache_key(tpath, data, 3, 0, topk), teacher, data, batch_size=5, rt=CPU,
                              amp=False, workers=1)
        n = len(data.splits["train"])
        assert views[0].shape[:2] == (n, 3) and (cache / "outputs.bin").stat().st_size == n * 3 * (
            bytes_per_view(3, topk, crops=True) - 20)
        seen = 0
        for epoch in (0, 1):
            loader = make_loader(data, "train", 4, train=True, views=views, seed=epoch)
            for batch in loader:
                with torch.inference_mode():
                    online = teacher(batch[0])
                if topk:  # the stored top-2 probabilities of exactly this view
                    p, c = online.softmax(1).topk(2, 1)
                    assert torch.allclose(batch[-1].softmax(1).gather(1, c), p, atol=2e-3)
                else:
                    assert torch.allclose(batch[-1], online, atol=1e-2, rtol=1e-3)
                seen += len(batch[1])
        assert seen == 2 * n


def test_streamed_shift_views_cache_the_same_outputs_as_in_memory(tmp_path):
    folder = make_folder(tmp_path / "f", per_class=5)
    memory = load_data(f"folder:{folder}", image_size=16, max_ram=1.0)
    stream = load_data(f"folder:{folder}", image_size=16, max_ram=0)
    stream.mean, stream.std = memory.mean, memory.std  # the sample's float64 statistics aside
    teacher, tpath = teacher_file(tmp_path)
    a, b = (load_or_build(tmp_path / name, cache_key(tpath, d, 4, 0), teacher, d, batch_size=6, rt=CPU, amp=False)
            for name, d in (("m", memory), ("s", stream)))
    assert np.array_equal(a[0].array, b[0].array) and np.allclose(a[1].array, b[1].array, atol=1e-3)


def test_student_distils_from_a_streamed_folder_through_a_top_k_cache(tmp_path, cli):
    folder = make_folder(tmp_path / "f", per_class=6, size=(64, 72))
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--dataset", f"folder:{folder}", "--device", "cpu", "--epochs", "1",
              "--batch-size", "8", "--image-size", "64"]
    teacher_main([*common, "--arch", "test_tiny_cnn"])
    code, out, err = cli(student_main, [*common, "--model", "test_small_cnn", "--teacher-cache", "2",
                                        "--teacher-topk", "2", "--workers", "1"])
    assert code == 0, err
    assert (run / "teacher/cache/views-k2-top2/key.json").is_file() and "computing teacher outputs" in out
    card = json.loads((run / "students/test_small_cnn/summary.json").read_text())["distillation"]
    assert card["teacher_topk"] == 2
    code, _, err = cli(student_main, [*common, "--model", "test_small_cnn", "--teacher-topk", "2", "--kd-loss", "mse",
                                      "--force"])
    assert code == 2 and "--kd-loss kl only" in err
