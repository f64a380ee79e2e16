"""Model registry: `create_model(name, num_classes, in_chans)` like timm's.

The three seed architectures come from torchvision with a choice of stem (`stem=`): `cifar`, a
3x3 stride-1 first convolution and no early max-pool, so 8x8 digits and 32x32 CIFAR images are not
shrunk to nothing before the first block; or `imagenet`, torchvision's strided stem, for 28x28
and larger inputs. Any other torchvision classifier or timm model
is created by name. The registry (`REGISTRY`, at the end of this module) lists every built-in
architecture, the selector's CNN (`selector_cnn`, moskd.selector_net) included, so importing this
module is all it takes to build any of them, from a checkpoint's card too
(`build_model_from_checkpoint`).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models.googlenet import BasicConv2d

from moskd.teacher_source import read_weights, shape_text
from moskd.checkpoint import inference_weights
from moskd.errors import MoskdError
from moskd.selector_net import selector_cnn

STEMS = ("cifar", "imagenet")


def _conv3x3(in_chans: int, out: int) -> nn.Conv2d:
    return nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise MoskdError(f"--stem {stem}: choose one of {', '.join(STEMS)}")


# Two stems per architecture:
#   cifar     3x3 stride-1 first convolution, no early max-pool: 8x8 and 32x32 inputs keep their
#             resolution into the first block (CIFAR practice);
#   imagenet  torchvision's own strided stem (7x7/2 convolution + 3x3/2 max-pool: /4 before the
#             first block, /8 for GoogLeNet): a 28x28 Fashion-MNIST image then costs about what an
#             8x8 one costs with the cifar stem, but the first convolution sees every pixel.
def resnet50(num_classes: int, in_chans: int = 3, stem: str = "cifar") -> nn.Module:
    _check_stem(stem)
    # zero-init of each block's last BN gamma: every residual branch starts as identity, which
    # keeps a 50-layer net trainable from scratch at SGD learning rates (Goyal et al. 2017)
    m = torchvision.models.resnet50(weights=None, num_classes=num_classes, zero_init_residual=True)
    if stem == "cifar":
        m.conv1, m.maxpool = _conv3x3(in_chans, 64), nn.Identity()
    elif in_chans != 3:
        m.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    return m


def densenet121(num_classes: int, in_chans: int = 3, stem: str = "cifar") -> nn.Module:
    _check_stem(stem)
    m = torchvision.models.densenet121(weights=None, num_classes=num_classes)
    if stem == "cifar":
        m.features.conv0, m.features.pool0 = _conv3x3(in_chans, 64), nn.Identity()
    else:
        if in_chans != 3:
            m.features.conv0 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        # ceil-mode transition pools: 28x28 -> 7 -> 4 -> 2 -> 1 instead of 7 -> 3 -> 1 -> 0 (a crash);
        # identical to floor mode on the even sizes ImageNet-sized inputs give
        for name in ("transition1", "transition2", "transition3"):
            getattr(m.features, name).pool = nn.AvgPool2d(2, 2, ceil_mode=True)
    return m


def googlenet(num_classes: int, in_chans: int = 3, stem: str = "cifar") -> nn.Module:
    _check_stem(stem)
    m = torchvision.models.googlenet(weights=None, num_classes=num_classes, aux_logits=False, init_weights=True)
    if stem == "cifar":
        # Drop the 7x7/2 conv and the first max-pool but keep the second: with no down-sampling
        # at all the inception blocks run at full resolution and GoogLeNet costs more MACs than
        # ResNet50 (90.6M vs 81.1M at 8x8); one 2x pool makes it the cheapest of the three.
        m.conv1 = BasicConv2d(in_chans, 64, kernel_size=3, stride=1, padding=1)
        m.maxpool1 = nn.Identity()
    elif in_chans != 3:
        m.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
    return m


# every built-in architecture, by the name a card's `arch` holds
REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet50": resnet50, "densenet121": densenet121, "googlenet": googlenet, "selector_cnn": selector_cnn,
}


def register_model(name: str) -> Callable:
    """A decorator adding an architecture of your own to REGISTRY (the tests' tiny networks, say)."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        REGISTRY[name] = fn
        return fn

    return add


def stem_kwargs(arch: str, stem: str) -> dict:
    """Model kwargs (kept in the model card) for --stem; only the three seed architectures have one."""
    _check_stem(stem)
    if arch in ("resnet50", "densenet121", "googlenet"):
        return {"stem": stem}
    if stem != "cifar":
        raise MoskdError(f"--stem {stem} applies to resnet50, densenet121 and googlenet only, not {arch}")
    return {}


def _torchvision_classifier(name: str, num_classes: int, in_chans: int) -> nn.Module:
    m = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_chans != 3:  # swap the first convolution for one taking in_chans channels
        for parent in m.modules():
            for child_name, child in parent.named_children():
                if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                    setattr(parent, child_name, nn.Conv2d(
                        in_chans, child.out_channels, child.kernel_size, child.stride, child.padding,
                        bias=child.bias is not None))
                    return m
    return m


def available_models() -> list[str]:
    return sorted(REGISTRY)


def create_model(name: str, num_classes: int, in_chans: int = 3, pretrained: str | None = None,
                 pretrained_partial: bool = False, **kwargs) -> nn.Module:
    """Create `name` from the registry, else torchvision's classifiers, else timm; optional local weights
    (all of them must fit unless pretrained_partial)."""
    if name in REGISTRY:
        model = REGISTRY[name](num_classes=num_classes, in_chans=in_chans, **kwargs)
    elif name in torchvision.models.list_models(module=torchvision.models):
        model = _torchvision_classifier(name, num_classes, in_chans)
    else:
        import timm

        if not timm.is_model(name):
            known = available_models() + torchvision.models.list_models(module=torchvision.models)
            close = difflib.get_close_matches(name, known + timm.list_models(), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"registered: {', '.join(available_models())}"
            raise MoskdError(f"unknown architecture '{name}'; {hint}")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if pretrained:
        load_pretrained(model, pretrained, partial=pretrained_partial)
    return model


def load_pretrained(model: nn.Module, path: str, partial: bool = False, log=print) -> dict:
    """Load local weights (a moskd checkpoint or a state dict, wrappers unwrapped as timm does) into
    `model`; prints how many tensors loaded and were skipped. A partial load (a model tensor the file
    lacks or shapes differently: a classifier for another class count, a stem for other channels)
    is refused unless `partial` (teacherTrain --pretrained-partial). Returns the counts."""


    state = read_weights(Path(path))
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in own if k not in usable]
    counts = {"loaded": len(usable), "skipped": len(skipped), "unused": len(state) - len(usable), "total": len(own)}
    first = "; ".join(f"{k} file {shape_text(state[k])} vs model {shape_text(own[k])}" if k in state else f"{k} not in file"
                      for k in skipped[:3])
    log(f"pretrained {path}: loaded {counts['loaded']} of {counts['total']} tensors, skipped {counts['skipped']}"
        + (f" ({first})" if skipped else "") + (f"; {counts['unused']} file tensors unused" if counts["unused"] else ""))
    if not usable:
        raise MoskdError(f"{path}: no tensor matches this architecture; check --arch and --pretrained")
    if skipped and not partial:
        raise MoskdError(f"{path}: partial load, {counts['skipped']} of {counts['total']} tensors would keep their "
                         f"random init ({first}); match --arch/--stem to the weights, or pass --pretrained-partial "
                         f"to fine-tune from the {counts['loaded']} that fit")
    model.load_state_dict(usable, strict=False)
    return counts


def build_model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Recreate the model a checkpoint's card describes, load its inference weights, eval mode."""
    card = ckpt["card"]
    model = create_model(card["arch"], num_classes=card["num_classes"], in_chans=card["in_chans"],
                         **card.get("model_kwargs", {}))
    model.load_state_dict(inference_weights(ckpt))
    return model.eval()


# ---------------------------------------------------------------- models from other data slices


class Renormalized(nn.Module):
    """Feeds a model trained with another mean/std (e.g. another --limit slice) from the shared
    batch: undo the shared normalisation and apply the model's own, in one affine step."""

    def __init__(self, inner: nn.Module, from_card: dict, to_card: dict):
        super().__init__()
        f_mean, f_std, t_mean, t_std = (torch.tensor(c[k]).view(1, -1, 1, 1)
                                        for c, k in ((from_card, "mean"), (from_card, "std"),
                                                     (to_card, "mean"), (to_card, "std")))
        self.inner = inner
        self.register_buffer("scale", f_std / t_std)
        self.register_buffer("shift", (f_mean - t_mean) / t_std)

    def forward(self, x):
        return self.inner(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself (for counting its cost), without a normalisation adapter."""
    return model.inner if isinstance(model, Renormalized) else model


def same_normalisation(a: dict, b: dict) -> bool:
    return all(len(a[k]) == len(b[k]) and all(abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in zip(a[k], b[k]))
               for k in ("mean", "std"))


def adapt_input(model: nn.Module, card: dict, shared: dict, where) -> nn.Module:
    """`model` (trained per `card`) made to accept batches preprocessed per the `shared` card."""
    if list(card["input_size"]) != list(shared["input_size"]):
        raise MoskdError(f"{where}: takes {card['input_size']} inputs, the run's other models "
                         f"{shared['input_size']}; retrain it on this run's data")
    if same_normalisation(card, shared):
        return model
    return Renormalized(model, shared, card).to(next(model.parameters()).device).eval()
