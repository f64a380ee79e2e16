"""Conv+BN folding: the folded model equals the unfolded one within 1e-5, every Conv -> BN pair
is folded, a convolution whose output has another use is left alone, and the fast-path switch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from moskd.fold import FastPath, fast_model, fold_batchnorm, prepare_input
from moskd.models import create_model
from moskd.selector_net import SelectorCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def with_trained_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def conv_bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ["googlenet", "densenet121", "selector"])
def test_folded_model_equals_the_unfolded_within_1e_5(name):
    torch.manual_seed(0)
    model = SelectorCNN(2, in_chans=1, width=8) if name == "selector" else create_model(name, 10, 1)
    model = with_trained_bn(model)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    folded, pairs = fold_batchnorm(model, x)
    left = conv_bn_count(folded)
    # googlenet (57 BasicConv2d) and the selector (3 blocks) only have conv -> BN. DenseNet121 has
    # 6 + 12 + 24 + 16 = 58 dense layers: each folds conv1 -> norm2, plus the stem's conv0 -> norm0;
    # its pre-activation BNs (BN -> ReLU -> conv: norm1 of every layer, the 3 transitions' norms and
    # the final norm5) have no convolution before them and stay
    assert (pairs, left) == {"googlenet": (57, 0), "selector": (3, 0), "densenet121": (1 + 58, 58 + 3 + 1)}[name]
    assert all(not isinstance(m, nn.BatchNorm2d) or m.training is False for m in folded.modules())
    with torch.no_grad():
        want, got = model(x), folded(x)
        other = torch.randn(3, 1, 8, 8)  # the fold holds for any input, not just the probe batch
        assert (folded(other) - model(other)).abs().max() <= 1e-5
    assert (got - want).abs().max() <= 1e-5
    assert conv_bn_count(model) == pairs + left  # the original is untouched


class SharedConvOutput(nn.Module):
    """conv's output feeds the BN and a skip: folding would change the skip, so it must not fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y).mean((2, 3))


def test_conv_with_another_use_is_left_unfolded():
    model = with_trained_bn(SharedConvOutput())
    x = torch.randn(2, 1, 8, 8)
    with pytest.warns(UserWarning, match="kept it unfolded"):
        folded, pairs = fold_batchnorm(model, x)
    assert pairs == 0 and folded is model
    with torch.no_grad():
        assert torch.equal(folded(x), model(x))


def test_fast_path_switches_parse_and_apply():
    assert FastPath.parse("eager") == FastPath(False, False, False)
    assert FastPath.parse("fold+cl") == FastPath(True, True, False) and str(FastPath(True, True, True)) == "fold+cl+compile"
    with pytest.raises(ValueError, match="unknown"):
        FastPath.parse("fold+turbo")
    model = with_trained_bn(SelectorCNN(2, in_chans=1, width=8))
    x = torch.randn(3, 1, 8, 8)
    path = FastPath.parse("fold+cl")
    fast = fast_model(model, x, path)
    assert fast.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert (fast(prepare_input(x, path)) - model(x)).abs().max() <= 1e-5
