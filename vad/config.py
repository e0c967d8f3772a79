"""One frozen dataclass per stage. Configs turn into plain dicts (saved with runs and inside checkpoints) and
back, with unknown keys and wrong types rejected by name."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar


@dataclass(frozen=True)
class ModelConfig:
    """What a checkpoint needs to rebuild its network."""

    method: str = "stpm"  # stpm | rstpm | mkd
    backbone: str = "efficientnet_lite0"  # efficientnet_lite0 (offline) | resnet18 | wide_resnet50_2 | vgg16 (mkd)
    levels: tuple[int, ...] | None = None  # pyramid levels (timm feature_info indices); None = backbone default
    teacher_weights: str = "pretrained"  # "pretrained" | "random" (ablation only) | path to a state dict
    allow_download: bool = True  # fetch torchvision weights when not cached (ResNets only)
    input_height: int = 256
    input_width: int | None = None  # None: keep the training footage's aspect ratio (rounded to a multiple of 16)
    combine: str = "product"  # stpm: how per-level maps are combined: product | sum
    direction_weight: float = 0.5  # mkd: lambda, the weight of the direction (1 - cosine) loss
    mkd_score: str = "mean"  # mkd: frame score = mean (the paper's: the frame's total loss) | max (per-position)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # stpm, mkd: all training; rstpm: the student pairs' stage
    disc_epochs: int = 10  # rstpm: the discriminative network's stage (trained after the pairs)
    batch_size: int = 8
    optimizer: str = "adam"  # adam (AdamW) | sgd (the paper's: lr 0.4, momentum 0.9, weight decay 1e-4)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup: float = 0.1  # fraction of the steps spent warming up (onecycle, cosine)
    val_fraction: float = 0.2  # tail of every training clip held out for checkpoint selection and calibration
    calibrate: bool = True  # per-position statistics of the held-out normal frames' anomaly maps
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    per_scene: bool = False  # one model per scene (ShanghaiTech)
    num_workers: int = 0  # DataLoader decode workers
    shuffle_buffer: int = 512


@dataclass(frozen=True)
class ScoreConfig:
    batch_size: int = 32
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16 (AMX), else off) | bf16 | fp16 | off
    calibrated: bool = False  # use the model's per-position calibration (measured worse on campus; see README)
    save_maps: bool = False  # also write anomaly maps (float16) for the renderer
    map_stride: int = 8  # saved maps keep one value per map_stride input pixels
    num_workers: int | None = None  # DataLoader decode workers; None: up to 8 on CUDA, 0 on a CPU (Scorer.num_workers)
    compile: bool | None = None  # torch.compile (stpm, rstpm); None: for jobs of >= 5000 frames (Scorer.compiles)


@dataclass(frozen=True)
class PostprocessConfig:
    sigma: float = 3.0  # temporal Gaussian smoothing, in frames (0 = off)
    normalisation: str = "minmax"  # minmax (per clip, benchmark convention) | calibrated | none
    reference_percentile: float = 99.0  # calibrated: 1.0 = this percentile of normal hold-out frame scores


@dataclass(frozen=True)
class EvalConfig:
    threshold_percentile: float = 99.0  # event threshold: this percentile of normal hold-out frame scores
    min_event_frames: int = 3  # shorter above-threshold runs are not reported as events
    pixel_max: int = 2_000_000  # pixel AUROC draws at most this many map cells
    plots: bool = True
    fps: float | None = None  # frame rate for event times of frame-folder clips (videos carry their own)


@dataclass(frozen=True)
class RenderConfig:
    layout: str = "overlay"  # overlay (heatmap over the frame) | side_by_side (frame | heatmap)
    opacity: float = 0.6  # heatmap opacity at and above the threshold (fading out below it; quiet regions untouched)
    colormap: str = "jet"  # any matplotlib colormap name
    heat_range: float = 1.5  # colours: 0 at the median normal frame score, 1/heat_range at the threshold (jet: yellow)
    strip_height: int = 72  # score strip below the frame, in pixels
    fps: float | None = None  # output rate for frame-folder clips (default: eval.fps); videos keep their own
    crf: int = 23  # H.264 quality (lower = better and bigger)
    preset: str = "veryfast"  # x264 speed preset


@dataclass(frozen=True)
class DataConfig:
    """Where a pipeline's data comes from; ``--data``/``--dataset`` on the command line fill or override it."""

    dataset: str | None = None  # shanghaitech | avenue | ped2 | folder
    root: str | None = None
    scenes: tuple[int | str, ...] | None = None  # ShanghaiTech scenes to use (None = all)
    frame_labels: str | None = None  # Avenue only: masks (default: any mask pixel set) | published (avenue.mat)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    render: RenderConfig = field(default_factory=RenderConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))
C = TypeVar("C")


def to_dict(cfg: Any) -> dict:
    """A config as nested plain dicts/lists (tuples become lists), safe for YAML, JSON and ``weights_only``."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{where}: got {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(v, item, where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads off/on (and no/yes) as booleans: amp: off means "off"
            return "on" if value else "off"
        raise ValueError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"{where}: unsupported config type {hint!r}")


def from_dict(cls: type[C], data: dict | None, where: str = "") -> C:
    """Build ``cls`` from a (partial) dict; missing fields take defaults, unknown keys raise ``ValueError``."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; expected one of {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """``["train.epochs=5", "model.levels=[1,2]"]`` applied to ``cfg``; values are parsed as YAML scalars/lists.
    An unknown key or a value of the wrong type raises ``ValueError`` naming it."""
    import yaml

    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=5)")
        node, parts = data, key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"unknown config key {key!r}; sections are {sorted(data)}")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"unknown config key {key!r}; expected one of "
                             f"{sorted('.'.join([*parts[:-1], k]) for k in node)}")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return from_dict(type(cfg), data)


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (sections ``data``, ``model``, ``train``, ``score``, ``postprocess``,
    ``eval``, ``render``; any may be left out) with ``KEY=VALUE`` overrides on top. No file: the defaults."""
    from pathlib import Path

    import yaml

    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{p}: not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping with sections {'/'.join(SECTIONS)}; got {type(data).__name__}")
        try:
            cfg = from_dict(RunConfig, data)
        except ValueError as err:
            raise ValueError(f"{p}: {err}") from err
    return apply_overrides(cfg, list(overrides))
