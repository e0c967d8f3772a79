"""Exported models: a trained model as an ONNX graph (and OpenVINO IR), and the runtimes that score with it.

The graph is one scoring call: ``frames (B, 3, H, W) -> scores (B,), map (B, h, w)`` for a frame model; for a model
with a past (the motion branch) the streaming step of :meth:`vad.models.motion.MotionSTPM.step`, ``frames, index
(B, context) int64, past_<i> (P, C_i, h_i, w_i) -> scores, map, branches (B, 2), feats_<i>``. Its folder
(:meth:`vad.runs.RunFolder.export`) holds ``metadata.json`` (input size, normalisation) and ``reference.npz`` (the
normal reference for the exported scoring settings); the branch statistics are constants of the graph.

Runtimes (:class:`Runtime`, ``pip install -e ".[deploy]"``): ONNX Runtime (CPU), and OpenVINO with f32 kept
throughout: the IR's weights are not halved and the inference precision is pinned to f32 (either drift moved scores
by percents; anomalib #2448). Their scores equal torch's to float tolerance (tests/test_export.py).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vad.atomic import atomic_path, write_text
from vad.config import BACKENDS, RUNTIMES, VARIANTS
from vad.errors import ConfigError, UsageError
from vad.models import AnomalyModel
from vad.runtime.reference import NormalReference

# 2: the step also returns each branch's frame score; 3: per-frame pasts (index, pool); 4: motion 0 without a past
FORMAT = "vad-export/4"
FORMATS = ("onnx", "openvino")
# the package each runtime and its lower-precision copies (vad.config's RUNTIMES, VARIANTS) need to run
MODULES = {b: b.split("-")[0] for b in (*RUNTIMES, *VARIANTS)}
# The runtimes "auto" chooses from on a CPU, with torch: the one that ran the model fastest on this machine, measured
# once per machine (ONNX Runtime led for the default model on an AVX2 CPU, OpenVINO on an AMX one, torch in bf16 for
# a ResNet-18 teacher there: docs/speed.md); ties go to the first.
PREFERENCE = RUNTIMES
SPEED_FILE = "speed.json"  # in an export's folder: {"<cpu>, <threads>; <setting>": {backend: frames/s}}
# Exporting takes 30-80 s on 2 CPU cores, about what ONNX Runtime saves on 1,000 frames of the default campus model:
# "auto" exports for jobs at least this long (and live streams), and uses an export that exists for any job.
EXPORT_MIN_FRAMES = 1000
INSTALL = 'pip install -e ".[deploy]" (ONNX Runtime and OpenVINO), or pip install onnxruntime / openvino'


def installed(backend: str) -> bool:
    """Whether ``backend``'s package is installed (torch always is)."""
    return backend == "torch" or importlib.util.find_spec(MODULES[backend]) is not None


def choose_backend(setting: str, model: AnomalyModel, device: torch.device, frames: int | None = None,
                   have_export: bool = False) -> str:
    """The backend ``score.backend`` names, checked. ``auto``: torch on a GPU and for MKD (its maps take input
    gradients); on a CPU an installed runtime when an export exists already, or the job has at least
    :data:`EXPORT_MIN_FRAMES` ``frames`` (``None``: a live stream, unbounded); else torch. Which runtime: the first
    of :data:`PREFERENCE` installed here (:func:`fastest_backend` measures once the export exists). A runtime asked
    for by name that is not installed is an error that says what to install."""
    if setting not in BACKENDS:
        raise ConfigError(f"score.backend: got {setting!r}; expected one of {', '.join(BACKENDS)}")
    if setting == "auto":
        worth = have_export or frames is None or frames >= EXPORT_MIN_FRAMES
        if device.type != "cpu" or model.method == "mkd" or not worth:
            return "torch"
        return next((b for b in PREFERENCE if installed(b)), "torch")
    if setting != "torch":
        if model.method == "mkd":
            raise UsageError(f"score.backend={setting}: mkd's anomaly maps take input gradients, which an exported "
                             "graph does not compute; use score.backend=torch")
        if device.type != "cpu":
            raise UsageError(f"score.backend={setting} runs on the CPU; use --device cpu, or score.backend=torch")
        if not installed(setting):
            raise UsageError(f"score.backend={setting} needs the {MODULES[setting]} package, which is not installed: "
                             f"{INSTALL}")
    return setting


class _Frames(nn.Module):
    """A frame model's exported function."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.score_and_map(frames)


class _Step(nn.Module):
    """A model with a past: its streaming step, with one input and one output per past level (at most 4)."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model
        self.levels = tuple(model.past_levels)

    def forward(self, frames: torch.Tensor, index: torch.Tensor, past_0: torch.Tensor,
                past_1: torch.Tensor | None = None, past_2: torch.Tensor | None = None,
                past_3: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        pool = dict(zip(self.levels, (past_0, past_1, past_2, past_3)[: len(self.levels)], strict=True))
        scores, amap, branches, feats = self.model.step(frames, pool, index)
        return (scores, amap, branches, *(feats[k] for k in self.levels))


def example_inputs(model: AnomalyModel, ckpt: dict, batch: int) -> tuple[torch.Tensor, ...]:
    """Inputs shaped as the exported graph's (:func:`_names`) for a batch of ``batch`` frames: zero frames, and for a
    model with a past each frame's past rows and a pool of one more row than a stream keeps. ``model`` on the CPU."""
    h, w = ckpt["input_size"]
    frames = torch.zeros(batch, 3, h, w)
    if not model.context:
        return (frames,)
    with torch.no_grad():
        one = model.past_features(frames[:1])
    pool = model.context + 1  # a size of its own: the exporter keeps the pool's and the batch's sizes apart
    index = torch.arange(batch * model.context).reshape(batch, model.context) % (pool + batch)
    return (frames, index, *(v.new_zeros((pool, *v.shape[1:])) for v in one.values()))


def machine() -> str:
    """This machine's CPU and the threads a runtime gets: what a measured speed holds for."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), name)
    return f"{name}, {torch.get_num_threads()} threads"


def _speed_book(folder: Path, setting: str) -> tuple[dict, str]:
    """``folder``'s :data:`SPEED_FILE` (empty when missing or unreadable) and this machine's key in it."""
    try:
        book = json.loads((folder / SPEED_FILE).read_text())
    except (OSError, ValueError):
        book = {}
    return book, f"{machine()}; {setting}".rstrip("; ")


def measured(folder: Path, setting: str, wanted: list[str]) -> dict | None:
    """The speeds of ``wanted`` measured on this machine for ``setting`` in ``folder`` (None: not all yet)."""
    book, key = _speed_book(folder, setting)
    speeds = book.get(key)
    return speeds if isinstance(speeds, dict) and all(isinstance(speeds.get(b), (int, float)) for b in wanted) else None


def fastest_backend(folder: Path, measure: Callable[[str], float], setting: str, wanted: list[str]
                    ) -> tuple[str, dict, bool]:
    """``(backend, speeds, measured)``: of ``wanted`` (:func:`vad.runtime.quantize.candidates`), the one that runs the
    export in ``folder`` fastest on this machine (ties: the earlier); each one's frames/s; whether this call measured
    any. ``measure(backend)`` is called once per machine and ``setting`` (batch size, torch's precision) per backend,
    kept in ``folder``'s :data:`SPEED_FILE`."""
    book, key = _speed_book(folder, setting)
    speeds = book.get(key) if isinstance(book.get(key), dict) else {}
    missing = [b for b in wanted if not isinstance(speeds.get(b), (int, float))]
    for backend in missing:
        speeds[backend] = round(measure(backend), 2)
    if missing:
        book[key] = speeds
        write_text(json.dumps(book, indent=2), folder / SPEED_FILE)
    best = max(wanted, key=lambda b: (speeds[b], -wanted.index(b)))
    return best, {b: speeds[b] for b in wanted}, bool(missing)


def _names(model: AnomalyModel) -> tuple[list[str], list[str]]:
    levels = range(len(getattr(model, "past_levels", ())))
    if not model.context:
        return ["frames"], ["scores", "map"]
    return (["frames", "index", *(f"past_{i}" for i in levels)],
            ["scores", "map", "branches", *(f"feats_{i}" for i in levels)])


def export_model(model: AnomalyModel, ckpt: dict, reference: NormalReference, folder: Path,
                 formats: tuple[str, ...] = ("onnx",)) -> Path:
    """Export ``model`` (on the CPU, in eval mode, its statistics those of ``reference``) into ``folder``:
    ``model.onnx``, with ``"openvino"`` in ``formats`` also ``model.xml``/``model.bin``, and ``metadata.json``,
    ``reference.npz``. Returns ``folder``."""
    if model.method == "mkd":
        raise UsageError("mkd's anomaly maps take input gradients, which an exported graph does not compute; mkd "
                         "scores with torch only")
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ConfigError(f"--format: got {sorted(unknown)}; expected one of {', '.join(FORMATS)}")
    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    inputs = example_inputs(model, ckpt, 2)
    names_in, names_out = _names(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    pool = torch.export.Dim("pool", min=1, max=65536)
    # the batch varies, and the pool of kept pasts with the streams in it
    dynamic = {"frames": {0: batch}, **({"index": {0: batch}} if model.context else {}),
               **{n: {0: pool} for n in names_in[2:]}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEED_FILE).unlink(missing_ok=True)  # measured on the export it replaces
    onnx = folder / "model.onnx"
    with (atomic_path(onnx, ".onnx") as tmp, torch.no_grad(), warnings.catch_warnings(),
          contextlib.redirect_stdout(io.StringIO())):  # the exporter's progress lines
        warnings.simplefilter("ignore")
        graph = _Step(model) if model.context else _Frames(model)
        program = torch.onnx.export(graph.eval(), inputs, input_names=names_in, output_names=names_out,
                                    dynamic_shapes=dynamic, dynamo=True, opset_version=18, verbose=False)
        program.save(str(tmp))
    if "openvino" in formats:
        _openvino_ir(onnx, folder / "model.xml")
    reference.save(folder / "reference.npz")
    meta = {"format": FORMAT, "method": model.method, "input_size": list(ckpt["input_size"]),
            "normalization": ckpt["normalization"],
            "context": model.context, "past_levels": list(getattr(model, "past_levels", ())),
            "stride": model.stride, "scoring": reference.settings, "model": reference.model,
            "inputs": names_in, "outputs": names_out,
            "threshold_note": "events: smoothed scores above the 99th percentile of reference.npz's scores "
                              "(eval.threshold_percentile); calibrated = (score - median) / (threshold - median)"}
    write_text(json.dumps(meta, indent=2), folder / "metadata.json")
    return folder


def _openvino_ir(onnx: Path, xml: Path) -> None:
    try:
        import openvino as ov
    except ImportError:
        raise UsageError(f"--format openvino needs the openvino package, which is not installed: {INSTALL}") from None
    with atomic_path(xml, ".xml") as tmp:
        try:
            save_openvino(ov.convert_model(str(onnx)), tmp, xml)
            tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        finally:
            tmp.with_suffix(".bin").unlink(missing_ok=True)


def save_openvino(model, path: Path, named: Path | None = None) -> None:
    """OpenVINO's ``save_model`` to ``path`` (weights kept in f32: its default halves them to f16). Its failure to
    write (a full disk: ``basic_ios::clear: iostream error``) is an ``OSError`` naming the file (``named``)."""
    import openvino as ov

    try:
        ov.save_model(model, str(path), compress_to_fp16=False)
    except RuntimeError as err:
        where = named or path
        raise OSError(errno.EIO, f"OpenVINO could not write the model ({str(err).strip()}): is the disk full?",
                      str(where)) from None


def exported(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds an export of the model file with SHA-1 ``digest`` (this format)."""
    meta = folder / "metadata.json"
    if not (meta.is_file() and (folder / "model.onnx").is_file()):
        return False
    try:
        data = json.loads(meta.read_text())
    except ValueError:
        return False
    return data.get("format") == FORMAT and data.get("model") == digest


class Runtime:
    """An exported model run by ONNX Runtime or OpenVINO, called as the torch model is by the scorer:
    :meth:`forward` (frame models) or :meth:`step` (models with a past), torch tensors in and out (CPU)."""

    def __init__(self, backend: str, folder: Path, threads: int | None = None) -> None:
        self.backend, self.folder = backend, Path(folder)
        self.meta = json.loads((self.folder / "metadata.json").read_text())
        self.levels = self.meta["past_levels"]
        threads = threads or torch.get_num_threads()
        if backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(self.folder / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
            self._run = lambda feed: session.run(None, feed)
        elif backend == "openvino":
            import openvino as ov

            source = self.folder / ("model.xml" if (self.folder / "model.xml").is_file() else "model.onnx")
            core, compiled = ov.Core(), {}
            # f32 pinned, except for a bf16 copy (vad.runtime.quantize); an int8 copy runs int8 where its quantizers say
            precision = "bf16" if self.meta.get("precision") == "bf16" else "f32"
            config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}

            def run(feed: dict) -> list:
                # One static shape per batch (and pool) size: OpenVINO's CPU plugin ran the dynamic batch 4x
                # slower (measured).
                shapes = {name: list(v.shape) for name, v in feed.items()}
                key = tuple(tuple(s) for s in shapes.values())
                if key not in compiled:
                    graph = core.read_model(str(source))
                    graph.reshape(shapes)
                    model = core.compile_model(graph, "CPU", config)
                    compiled[key] = (model, model.create_infer_request())
                model, request = compiled[key]
                result = request.infer(feed)
                return [result[out] for out in model.outputs]

            self._run = run
        else:
            raise ConfigError(f"unknown runtime {backend!r}; expected onnxruntime or openvino")

    def _call(self, feed: dict[str, np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.asarray(v)) for v in self._run(feed)]

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self._call({"frames": _array(frames)}))

    def step(self, frames: torch.Tensor, pool: dict[str, torch.Tensor], index: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        feed = {"frames": _array(frames), "index": index.detach().cpu().numpy().astype(np.int64),
                **{f"past_{i}": _array(pool[k]) for i, k in enumerate(self.levels)}}
        scores, amap, branches, *feats = self._call(feed)
        return scores, amap, branches, dict(zip(self.levels, feats, strict=True))


def _array(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().contiguous().cpu().numpy()
