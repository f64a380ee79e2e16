"""Model registry: shapes, the small-input stem, and the cost ordering teacher > students."""
import pytest
import torch

from moskd.errors import MoskdError
from moskd.models import available_models, create_model
from moskd.profile import count_macs, count_params

pytestmark = pytest.mark.usefixtures("one_thread")  # small inputs: thread hand-offs cost more than they save
SIZES = {"digits": [1, 8, 8], "cifar": [3, 32, 32]}


@pytest.mark.parametrize("arch", ["resnet50", "densenet121", "googlenet"])
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_seed_architectures_output_one_logit_per_class(arch, size):
    model = create_model(arch, num_classes=7, in_chans=size[0]).eval()
    x = torch.randn(2, *size)
    with torch.no_grad():
        out = model(x)
        alone = model(x[1:])
    assert out.shape == (2, 7)
    torch.testing.assert_close(out[1:], alone, rtol=1e-4, atol=1e-5)  # eval mode: an image's logits are its own


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_every_student_is_cheaper_than_the_teacher(size):
    teacher = create_model("resnet50", 10, size[0])
    t_params, t_macs = count_params(teacher), count_macs(teacher, size)
    for student in ("densenet121", "googlenet"):
        m = create_model(student, 10, size[0])
        assert count_params(m) < t_params, student
        assert count_macs(m, size) < t_macs, student


def test_small_input_stem_keeps_resolution():
    # a stock ResNet50 shrinks 32x32 to 8x8 before layer1; the small-input stem keeps 32x32
    model = create_model("resnet50", 10, 3)
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(layer1=o.shape[-1]))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert seen["layer1"] == 32
    assert count_macs(model, [3, 32, 32]) > 4 * count_macs(create_model("resnet50", 10, 3, stem="imagenet"),
                                                           [3, 32, 32])


def test_other_torchvision_and_timm_models_by_name():
    tv = create_model("resnet18", num_classes=5, in_chans=1).eval()
    assert tv(torch.randn(1, 1, 32, 32)).shape == (1, 5)
    tm = create_model("resnet10t", num_classes=4, in_chans=1).eval()  # timm-only name
    assert tm(torch.randn(1, 1, 32, 32)).shape == (1, 4)
    assert {"resnet50", "densenet121", "googlenet"} <= set(available_models())


def test_unknown_architecture_suggests_names():
    with pytest.raises(MoskdError, match="did you mean.*resnet50"):
        create_model("resnet05", 10)


def test_pretrained_local_weights_skip_mismatched_head(tmp_path):
    src = create_model("googlenet", num_classes=10, in_chans=1)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = create_model("googlenet", num_classes=3, in_chans=1, pretrained=str(path), pretrained_partial=True)
    assert torch.equal(dst.conv1.conv.weight, src.conv1.conv.weight)
    assert dst.fc.weight.shape == (3, 1024)
