"""One frozen dataclass per stage. Configs turn into plain dicts (saved with runs and inside checkpoints) and
back, with unknown keys and wrong types rejected by name."""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml

from vad.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Range:
    """Bounds of a number setting, checked when a config is loaded: ``Annotated[float, Range(gt=0)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def check(self, value: float, where: str) -> None:
        if value != value or value in (float("inf"), float("-inf")):  # NaN, infinity: never a setting
            raise ConfigError(f"{where}: got {value!r}; expected a finite number {self.describe()}".rstrip())
        ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if not ok:
            raise ConfigError(f"{where}: got {value!r}; expected a value {self.describe()}")

    def describe(self) -> str:
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)


@dataclass(frozen=True)
class Check:
    """A named test of a setting that a type cannot express (e.g. a colormap name)."""

    test: Callable[[Any], bool]
    expected: str

    def check(self, value: Any, where: str) -> None:
        if not self.test(value):
            raise ConfigError(f"{where}: got {value!r}; expected {self.expected}")


def _is_colormap(name: str) -> bool:
    import matplotlib

    return name in matplotlib.colormaps


Positive = Annotated[int, Range(ge=1)]
Percentile = Annotated[float, Range(gt=0, le=100)]
Amp = Literal["auto", "bf16", "fp16", "off"]
Dataset = Literal["shanghaitech", "avenue", "ped2", "ped1", "folder"]  # vad.io.DATASETS (a test keeps them equal)
Backbone = Literal["efficientnet_lite0", "resnet18", "wide_resnet50_2", "vgg16"]  # vad.models.backbones.BACKBONES
# The pyramid levels each backbone has (timm's feature_info indices; vgg16: MKD's conv numbers), checked with every
# other setting (a test keeps them equal to the networks').
LEVELS = {"efficientnet_lite0": (0, 4), "resnet18": (0, 4), "wide_resnet50_2": (0, 4), "vgg16": (1, 13)}
LEVEL_EXAMPLE = {"efficientnet_lite0": (2, 3), "resnet18": (1, 2, 3), "wide_resnet50_2": (1, 2, 3),
                 "vgg16": (3, 6, 9, 12)}
ScoreNormalisation = Literal["minmax", "calibrated", "none"]
X264Preset = Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]
# What can run a model (score.backend, --backend, a site's backend:): torch, an exported copy (vad.runtime.export),
# or its int8 / bf16 copy (vad.runtime.quantize). The one list of their names; auto picks among them.
RUNTIMES = ("onnxruntime", "openvino")
VARIANTS = ("onnxruntime-int8", "openvino-int8", "openvino-bf16")
BACKENDS = ("auto", "torch", *RUNTIMES, *VARIANTS)
Backend = Literal[BACKENDS]  # the setting's type: checked against BACKENDS when a config is loaded


@dataclass(frozen=True)
class ModelConfig:
    """What a checkpoint needs to rebuild its network, and how it turns its outputs into scores. The settings in
    :data:`SCORING` only change scoring (never training): ``score`` applies them to a trained model; every other
    field is fixed by the trained model."""

    method: Literal["stpm", "rstpm", "mkd"] = "stpm"
    backbone: Backbone = "efficientnet_lite0"  # efficientnet_lite0 (offline weights) | resnet18 | ... | vgg16 (mkd)
    levels: tuple[int, ...] | None = None  # pyramid levels (timm feature_info indices); None = backbone default
    teacher_weights: str = "pretrained"  # "pretrained" | "random" (ablation only) | path to a state dict
    allow_download: bool = True  # fetch torchvision weights when not cached (ResNets only)
    input_height: Annotated[int, Range(ge=32)] = 256
    input_width: Annotated[int, Range(ge=32)] | None = None  # None: the footage's aspect ratio (multiple of 16)
    combine: Literal["product", "sum"] = "product"  # stpm: how per-level maps are combined
    direction_weight: Annotated[float, Range(ge=0)] = 0.5  # mkd: lambda, the weight of the direction (1 - cos) loss
    mkd_score: Literal["mean", "max"] = "mean"  # mkd: frame score = mean (the paper's: the frame's loss) | max
    motion: bool | None = None  # a causal motion branch fused with appearance (vad.models.motion); stpm only.
    # None: on for stpm, off for rstpm and mkd
    motion_context: Annotated[int, Range(ge=1, le=8)] = 2  # motion: past frames the predictor sees
    fusion: Literal["sum", "max"] = "max"  # motion: how the standardised appearance and motion maps are combined
    motion_pool: Literal[1, 3, 5] = 3  # motion: the motion map is averaged over k x k cells (1: not)
    motion_levels: Literal["finest", "all"] = "finest"  # motion: the pyramid levels the predictor predicts and
    # scores (finest: the smallest stride only; all: every level of the teacher, combined like STPM's)

    # The speed cue (vad.models.speed): optical-flow speed against the normal speeds of its image row, fused with
    # the model's map; weights-free, causal. None: on for stpm, off for rstpm and mkd
    speed: bool | None = None
    speed_cell: Annotated[int, Range(ge=1, le=256)] = 24  # speed: cells averaged over this many input pixels (about
    # a person's height at the pipelines' input sizes: 20-40 px)

    def __post_init__(self) -> None:
        if self.levels is not None:
            low, high = LEVELS[self.backbone]
            if (not self.levels or list(self.levels) != sorted(set(self.levels))
                    or not low <= self.levels[0] <= self.levels[-1] <= high):
                what = "conv numbers" if self.backbone == "vgg16" else "feature levels"
                raise ConfigError(f"model.levels: got {list(self.levels)}; expected increasing {what} of "
                                  f"{self.backbone} in {low}..{high}, e.g. {list(LEVEL_EXAMPLE[self.backbone])}")
        if self.motion and self.method != "stpm":
            raise ConfigError(f"model.motion: got true with model.method {self.method!r}; the motion branch is "
                             "stpm's (set model.motion=false, or model.method=stpm)")

    @property
    def has_speed(self) -> bool:
        return self.method == "stpm" if self.speed is None else self.speed

    @property
    def has_motion(self) -> bool:
        return self.method == "stpm" if self.motion is None else self.motion

    def scoring(self) -> dict:
        """The scoring settings (:data:`SCORING`) as a plain dict."""
        return {k: getattr(self, k) for k in SCORING}


# ModelConfig fields that change how a trained model scores, never how it trains: applied by `score`, recorded with
# every scored clip (a changed one re-scores it), left out of training's resume check.
SCORING = ("combine", "fusion", "motion_pool", "mkd_score")


@dataclass(frozen=True)
class TrainConfig:
    epochs: Positive = 30  # stpm, mkd: all training; rstpm: the student pairs' stage
    disc_epochs: Positive = 10  # rstpm: the discriminative network's stage (trained after the pairs)
    batch_size: Positive = 8
    optimizer: Literal["adam", "sgd"] = "adam"  # adam (AdamW) | sgd (the paper's: lr 0.4, momentum 0.9, wd 1e-4)
    lr: Annotated[float, Range(gt=0)] = 1e-3
    momentum: Annotated[float, Range(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Range(ge=0)] = 0.0
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    warmup: Annotated[float, Range(ge=0, lt=1)] = 0.1  # fraction of the steps spent warming up (onecycle, cosine)
    val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.2  # tail of every training clip held out (checkpoint
    # selection, the normal reference scores, per-position statistics)
    position_stats: bool = True  # per-position statistics of the held-out normal frames' anomaly maps
    seed: int = 0
    # auto: bf16 on CUDA, and on CPUs with native bf16 (AMX) with the depthwise convolutions that train kept in
    # float32 (0.7-0.83x a float32 step there); on CPUs with AVX512-BF16 but no AMX, whichever a student step measures
    # faster at the start (0.70x on a Zen 4 EPYC: bf16; benchmarks/train_step.py); else off. bf16|fp16|off
    amp: Amp = "auto"
    per_scene: bool = False  # one model per scene (ShanghaiTech)
    num_workers: Annotated[int, Range(ge=0)] = 0  # DataLoader decode workers (train.cache false)
    shuffle_buffer: Positive = 512  # train.cache false: frames mixed across clips while streaming
    # Hold the training frames in memory, decoded once, with the frozen teacher's features of each
    # (vad.offline.trainset): the same samples, each epoch a full shuffle; false: decode (and run the teacher) every
    # epoch
    cache: bool = True
    cache_gb: Annotated[float, Range(gt=0)] = 8.0  # the most train.cache may hold; more is refused before training
    # Frames a model trains on (per process): longer footage is sampled in runs of 16 consecutive frames spread evenly
    # over its clips, the same every epoch (the hold-out's validation loss: a quarter as many); null: every frame
    max_frames: Positive | None = 4000
    object_shift: Annotated[float, Range(ge=0, le=1)] | None = None  # probability that a training sample gets one of
    # its moving objects copied to another place (vad.offline.augment; fixed cameras); None: 0.5 for stpm, 0 otherwise


@dataclass(frozen=True)
class ScoreConfig:
    batch_size: Positive = 32
    amp: Amp = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16 (AMX), else off) | bf16 | fp16 | off
    per_position: bool = False  # standardise maps per position with the model's hold-out statistics (measured
    # worse on campus; see README)
    save_maps: bool = True  # also write anomaly maps (float16): the renderer's heatmaps and pixel AUROC need them
    map_stride: Positive = 8  # saved maps keep one value per map_stride input pixels
    num_workers: Annotated[int, Range(ge=0)] | None = None  # decode workers; None: up to 8 on CUDA, 0 on a CPU
    compile: bool | None = None  # torch.compile (stpm, rstpm); None: for jobs of >= 5000 frames (Runner.compiles)
    # What runs the model: torch, or an exported copy (vad.runtime.export), or its int8 / bf16 copy
    # (vad.runtime.quantize); auto: on a CPU whichever of torch, the installed runtimes and the copies that passed their
    # check ran fastest there (measured once: RUN/export/*/speed.json), torch on a GPU
    backend: Backend = "auto"


@dataclass(frozen=True)
class PostprocessConfig:
    sigma: Annotated[float, Range(ge=0, le=1000)] = 3.0  # temporal Gaussian smoothing, in frames (0 = off; the
    # widest in the literature is AED-MAE's 282)
    normalisation: ScoreNormalisation = "minmax"  # minmax (per clip, benchmark convention) | calibrated (0 at the
    # median normal hold-out score, 1 at the event threshold) | none
    causal_window: Annotated[int, Range(ge=1, le=100)] = 3  # the live rule's smoothing: the mean of the last N scores


@dataclass(frozen=True)
class EvalConfig:
    threshold_percentile: Percentile = 99.0  # event threshold: this percentile of normal hold-out frame scores
    min_event_frames: Positive = 3  # shorter above-threshold runs are not reported as events; the live rule opens
    # an event after this many frames above the threshold
    close_frames: Positive = 3  # the live rule closes an event after this many frames below the threshold
    rule: Literal["offline", "causal"] = "offline"  # the events evaluate writes: offline (the smoothed scores of the
    # whole clip, sigma centred) | causal (the live rule: from the past alone; vad.runtime.postprocess.CausalRule).
    # metrics.json reports the alarm rates of both
    pixel_max: Positive = 2_000_000  # pixel AUROC draws at most this many map cells
    plots: bool = True
    fps: Annotated[float, Range(gt=0)] | None = None  # frame rate for event times of frame-folder clips


@dataclass(frozen=True)
class RenderConfig:
    layout: Literal["overlay", "side_by_side"] = "overlay"  # heatmap over the frame | frame and heatmap side by side
    opacity: Annotated[float, Range(ge=0, le=1)] = 0.6  # heatmap opacity at and above the threshold
    colormap: Annotated[str, Check(_is_colormap, "a matplotlib colormap name (e.g. jet, turbo, inferno)")] = "jet"
    heat_range: Annotated[float, Range(gt=1)] = 1.5  # colours: 0 at the median normal score, 1/heat_range at the
    # threshold (jet: yellow)
    strip_height: Annotated[int, Range(ge=24)] = 72  # score strip below the frame, in pixels
    fps: Annotated[float, Range(gt=0)] | None = None  # output rate for frame-folder clips (default: eval.fps)
    crf: Annotated[int, Range(ge=0, le=51)] = 23  # H.264 quality (lower = better and bigger)
    preset: X264Preset = "veryfast"  # x264 speed preset


@dataclass(frozen=True)
class DataConfig:
    """Where a pipeline's data comes from; ``--data``/``--dataset`` on the command line fill or override it."""

    dataset: Dataset | None = None
    root: str | None = None
    scenes: tuple[int | str, ...] | None = None  # ShanghaiTech scenes to use (None = all)
    frame_labels: Literal["masks", "published"] | None = None  # Avenue only: masks (default: a frame is anomalous
    # when any pixel of its volLabel mask is set) | published (the event intervals of avenue.mat; data/avenue)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    @property
    def object_shift_rate(self) -> float:
        """``train.object_shift`` resolved (None: 0.5 for stpm, where it was measured, 0 for the other methods)."""
        p = self.train.object_shift
        return (0.5 if self.model.method == "stpm" else 0.0) if p is None else p


def choices(hint: Any) -> tuple:
    """The allowed values of a ``Literal`` setting type (e.g. ``choices(ScoreNormalisation)``)."""
    return typing.get_args(hint)


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
    if origin is Annotated:  # a base type with checks: Range, Check
        base, *checks = typing.get_args(hint)
        value = _coerce(value, base, where)
        for c in checks:
            c.check(value, where)
        return value
    if origin is Literal:
        options = typing.get_args(hint)
        if isinstance(value, bool) and not any(isinstance(o, bool) for o in options):
            value = "on" if value else "off"  # YAML 1.1 reads off/on as booleans: amp: off means "off"
        if value not in options:
            raise ConfigError(f"{where}: got {value!r}; expected one of {', '.join(map(str, options))}")
        return value
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
        raise ConfigError(errors[0] if errors else f"{where}: got {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(v, item, where) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads off/on (and no/yes) as booleans: amp: off means "off"
            return "on" if value else "off"
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"{where}: unsupported config type {hint!r}")


def check_field(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` checked (and converted, as :func:`from_dict` does) against the type of field ``name`` of config
    dataclass ``cls``; a :class:`ConfigError` names ``where``, the value and what was expected."""
    return _coerce(value, typing.get_type_hints(cls, include_extras=True)[name], where)


RETIRED = {  # keys of older configs (and run folders' config.yaml) -> what replaced them
    "postprocess.reference_percentile": "calibrated scores now run from 0 at the median normal hold-out score to 1 at "
                                        "the event threshold (eval.threshold_percentile)",
}


def from_dict(cls: type[C], data: dict | None, where: str = "") -> C:
    """Build ``cls`` from a (partial) dict; missing fields take defaults, unknown keys raise ``ValueError``."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        for key in unknown:
            if f"{prefix}{key}" in RETIRED:
                raise ConfigError(f"config key {prefix}{key} was removed: {RETIRED[prefix + key]}; delete it")
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; expected one of {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """``["train.epochs=5", "model.levels=[1,2]"]`` applied to ``cfg``; values are parsed as YAML scalars/lists.
    An unknown key or a value of the wrong type raises ``ValueError`` naming it."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=5)")
        node, parts = data, key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {key!r}; sections are {sorted(data)}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}; expected one of "
                             f"{sorted('.'.join([*parts[:-1], k]) for k in node)}")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "not valid YAML"
            raise ConfigError(f"--set {item}: the value {raw!r} is not valid YAML ({problem}); e.g. "
                             f"{key}=5, {key}=[1,2], {key}=text") from None
    return from_dict(type(cfg), data)


MAX_CONFIG_BYTES = 1 << 20  # a settings file (pipeline, site) is a page of YAML; past this it is refused unread


def read_config_text(path, what: str = "config file") -> str:
    """The text of the settings file ``path``: refused with one :class:`ConfigError` naming it when it is over
    ``MAX_CONFIG_BYTES`` (read before any parsing: a huge YAML file costs minutes and gigabytes) or not UTF-8."""
    p = Path(path)
    with p.open("rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)  # never more: the rest of a huge file is not read
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: {p.stat().st_size:,} bytes; a {what} is a page of YAML, at most "
                          f"{MAX_CONFIG_BYTES:,} bytes: is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); expected a YAML "
                          f"{what} saved as UTF-8") from None


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (), saved: bool = False
                ) -> RunConfig:
    """A :class:`RunConfig` from a YAML file (sections ``data``, ``model``, ``train``, ``score``, ``postprocess``,
    ``eval``, ``render``; any may be left out) with ``KEY=VALUE`` overrides on top. No file: the defaults.
    ``saved``: the file is a run folder's ``config.yaml``, written by an older version maybe: its retired keys
    are dropped with a note (a config a person wrote is refused instead, naming what replaced them)."""
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(read_config_text(p, "pipeline file")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({err})") from err
        except RecursionError:
            raise ConfigError(f"{p}: not valid YAML (nested too deep); expected a pipeline file") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping with sections {'/'.join(SECTIONS)}; got {type(data).__name__}")
        for key in RETIRED if saved else ():
            section, name = key.split(".")
            if name in (data.get(section) or {}):
                del data[section][name]
                log.warning(f"note: {p}: {key} is no longer used ({RETIRED[key]}); ignored")
        try:
            cfg = from_dict(RunConfig, data)
        except ValueError as err:
            raise ConfigError(f"{p}: {err}") from err
    return apply_overrides(cfg, list(overrides))
