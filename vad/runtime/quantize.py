"""Lower-precision copies of an exported model, checked on normal footage before anything scores with them.

Variants (:data:`VARIANTS`), each a backend of its own: ``onnxruntime-int8`` (ONNX Runtime's post-training static
quantization, QDQ S8S8: the format it advises for CPUs; U8S8 can saturate without VNNI), ``openvino-int8`` (NNCF's
post-training quantization of the IR) and ``openvino-bf16`` (the IR run in bf16, on CPUs with native bf16; no
calibration). A copy is made from the f32 export with normal footage only (:func:`make_variant`):

1. **Calibration** (int8): the streaming step's inputs for :data:`CALIBRATION_FRAMES` training frames, in runs of
   consecutive frames spread over the training clips (the motion branch's pasts are real), as they are and with
   pseudo-anomalies pasted in (:func:`record_feeds`). Never a hold-out frame, never a test clip.
2. **Its own normal reference**: the branch statistics refitted to the copy's hold-out scores, the copy made again
   with them; its hold-out scores give the threshold (and per-position statistics): ``reference.npz`` beside it.
3. **The check** on the hold-out, each frame as it is and with a pseudo-anomaly (normal frames alone can be too
   alike to rank, and a copy that clips what calibration never saw agrees on them and loses anomalies): Spearman
   rank correlation with the f32 export's frame scores >= :data:`MIN_SPEARMAN`, frames above the threshold under one
   only <= :data:`MAX_FLIPS` (:class:`Check`). An int8 copy that fails is made again with the convolutions the
   detector compares kept in f32 (:func:`compared_layers`); one that still fails is kept with its check and never
   used (a backend named for it is refused; ``auto`` skips it).

Each variant sits in ``RUN/export/<reference>/<variant>/``: the model, ``metadata.json`` (``precision``, the layers
kept in f32), ``reference.npz``, ``check.json``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vad.atomic import write_text
from vad.config import VARIANTS as BACKEND_VARIANTS
from vad.device import cpu_flags
from vad.errors import UsageError
from vad.io.dataset import make_loader
from vad.models.pseudo import pseudo_anomalies
from vad.runtime.batches import stream, to_frames
from vad.runtime.export import INSTALL, PREFERENCE, Runtime, installed, save_openvino
from vad.runtime.reference import NormalReference, event_threshold, position_statistics, spread_runs

log = logging.getLogger(__name__)

VARIANTS = {v: tuple(v.split("-")) for v in BACKEND_VARIANTS}  # copy -> (runtime, precision)
CALIBRATION_FRAMES = 300  # NNCF's default subset size; ONNX Runtime's MinMax ranges settle well before that
RUN_FRAMES = 16  # consecutive frames per calibration run
MIN_SPEARMAN = 0.98  # frame scores (hold-out, and with pseudo-anomalies) against the f32 export's: docs/speed.md
# hold-out frames above the threshold under one and not the other: at most 1 % of them, or one frame swapped
# (2 flips: at the 99th percentile a small hold-out has one frame above each threshold)
MAX_FLIPS = 0.01
CHECK_FILE = "check.json"
PSEUDO_SEED = 0  # the pseudo-anomalies pasted into hold-out and calibration frames
ORT_OPS = None  # the op types ONNX Runtime quantizes (None: all it can; convolutions alone measured far worse)


@dataclass
class Check:
    """A variant's check on the normal hold-out (see the module docstring)."""

    maps: float  # rank correlation of the normal hold-out's anomaly maps' cells with the f32 export's
    scores: float  # rank correlation of the frame scores (hold-out, and with pseudo-anomalies) with the f32 export's
    flips: int  # of those frames, those above the threshold under one only
    frames: int  # hold-out frames, each twice: as it is, and with a pseudo-anomaly
    passed: bool
    ignored: list[str] = field(default_factory=list)  # layers kept in f32

    def line(self) -> str:
        kept = f", {len(self.ignored)} layers kept in f32" if self.ignored else ""
        verdict = "passed" if self.passed else "FAILED: not used"
        return (f"rank correlation with f32 {self.scores:.4f} over the frame scores (>= {MIN_SPEARMAN}; hold-out "
                f"frames as they are and with pseudo-anomalies), {self.maps:.4f} over the normal maps; {self.flips} of "
                f"{self.frames} frames above the threshold under one only (<= {allowed_flips(self.frames)}){kept}: "
                f"{verdict}")


def allowed_flips(frames: int) -> int:
    """Hold-out frames allowed above the threshold under one only (:data:`MAX_FLIPS`)."""
    return max(2, int(MAX_FLIPS * frames))


def native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def missing(variant: str) -> str | None:
    """Why ``variant`` cannot be made here (None: it can)."""
    runtime, precision = VARIANTS[variant]
    if not installed(runtime):
        return f"{variant} needs the {runtime} package, which is not installed: {INSTALL}"
    if variant == "openvino-int8" and importlib.util.find_spec("nncf") is None:
        return "openvino-int8 is made with NNCF, which is not installed: pip install nncf"
    if precision == "bf16" and not native_bf16():
        return "openvino-bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one has neither"
    return None


def read_check(folder: Path) -> Check | None:
    """The check of the variant in ``folder`` (None: not made, or unreadable)."""
    try:
        return Check(**json.loads((folder / CHECK_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def made_for(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds a copy of the model with SHA-1 ``digest`` (checked, passed or not)."""
    try:
        return json.loads((folder / "metadata.json").read_text()).get("model") == digest
    except (OSError, ValueError):
        return False


def passed(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds a copy of the model with SHA-1 ``digest`` that passed its check."""
    check = read_check(folder)
    return bool(check and check.passed and made_for(folder, digest))


def candidates(folder: Path, digest: str) -> list[str]:
    """What ``auto`` chooses from for the export in ``folder`` (of the model with SHA-1 ``digest``): the installed
    runtimes, the lower-precision copies made beside it that passed their check, torch."""
    copies = [v for v in VARIANTS if installed(v) and passed(folder / v, digest)]
    return [b for b in PREFERENCE if installed(b)] + copies + ["torch"]


def runtime(folder: Path, threads: int | None = None) -> Runtime:
    """The runtime of the variant in ``folder``."""
    meta = json.loads((folder / "metadata.json").read_text())
    return Runtime(VARIANTS[meta["variant"]][0], folder, threads)


def _score(scorer, clips, segments: list[tuple[str, tuple[int, int]]], pseudo: bool = False
           ) -> dict[str, torch.Tensor]:
    """Raw outputs of ``scorer`` (with whatever runs its model) over ``segments`` of ``clips``, concatenated:
    ``scores`` and ``maps`` (fused, not standardised per position) and ``branches`` when the model has them.
    ``pseudo``: every frame with a pseudo-anomaly pasted in (the same ones on every call)."""
    generator = torch.Generator().manual_seed(PSEUDO_SEED)
    by_name = {c.name: c for c in clips}
    out: dict[str, list] = {}
    per_position, scorer.per_position = scorer.per_position, False
    try:
        for name, rng in segments:
            scorer.pasts.forget()
            for batch in make_loader(stream(scorer, [by_name[name]], {name: rng})):
                x = to_frames(scorer, batch)
                clip, first = batch["clip"][0], int(batch["index"][0])
                if batch.get("context"):
                    scorer.pasts.prime(x, clip, first)
                    continue
                if pseudo:
                    x = pseudo_anomalies(x, generator, p=1.0)[0]
                scores, amap, branches = scorer(x, clip, first)
                for k, v in (("scores", scores), ("maps", amap), ("branches", branches)):
                    if v is not None:
                        out.setdefault(k, []).append(v.float().cpu())
    finally:
        scorer.per_position = per_position
        scorer.pasts.forget()
    return {k: torch.cat(v) for k, v in out.items()}


def record_feeds(scorer, f32: Runtime, clips, segments) -> list[dict[str, np.ndarray]]:
    """The inputs the f32 export gets while ``scorer`` scores ``segments``, as they are and with pseudo-anomalies
    pasted in: the calibration set. Calibrated on normal frames alone, the activations' ranges end where normal
    footage ends and an anomaly's features are clipped (measured: a copy calibrated so lost a fifth of campus-public's
    anomalous frames); pseudo-anomalies made from the same normal frames give the ranges headroom."""
    feeds, run = [], f32._run

    def recording(feed: dict) -> list:
        feeds.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return run(feed)

    f32._run = recording
    try:
        scorer.use(f32)
        _score(scorer, clips, segments)
        _score(scorer, clips, segments, pseudo=True)
    finally:
        f32._run = run
        scorer.use(None)
    return feeds


def compare(f32: tuple[dict, np.ndarray, np.ndarray], copy_: tuple[dict, np.ndarray, np.ndarray], percentile: float,
            ignored: list[str]) -> Check:
    """The check of a copy against the f32 export: each ``(hold-out outputs, their frame scores, the frame scores of
    the same frames with pseudo-anomalies)``; each frame score against its own threshold."""
    from scipy.stats import spearmanr

    def rho(a, b) -> float:
        value = float(spearmanr(np.ravel(a), np.ravel(b)).statistic)
        return round(value, 5) if np.isfinite(value) else -1.0

    (f32_out, f32_normal, f32_pseudo), (out, normal, pseudo) = f32, copy_
    f32_all, scores = np.concatenate([f32_normal, f32_pseudo]), np.concatenate([normal, pseudo])
    over = f32_all > event_threshold(f32_normal, percentile)
    flips = int(np.count_nonzero(over != (scores > event_threshold(normal, percentile))))
    maps, ranks = rho(f32_out["maps"].numpy(), out["maps"].numpy()), rho(f32_all, scores)
    ok = ranks >= MIN_SPEARMAN and flips <= allowed_flips(len(scores))
    return Check(maps, ranks, flips, len(scores), ok, ignored)


def _frame_scores(out: dict[str, torch.Tensor], state: dict, per_position: bool) -> np.ndarray:
    """Frame scores from raw outputs: as they are, or the maxima of the maps standardised per position."""
    if not per_position:
        return out["scores"].numpy().astype(np.float64)
    loc, scale = (torch.as_tensor(np.asarray(state[k])) for k in ("pos_loc", "pos_scale"))
    return ((out["maps"] - loc) / scale).flatten(1).amax(1).numpy().astype(np.float64)


def compared_layers(onnx_path: Path, depth: int = 4) -> list[str]:
    """The convolutions whose outputs the detector compares: for each feature the graph normalises before comparing
    (the input of a ``ReduceL2``), the nearest ``Conv`` nodes upstream (through at most ``depth`` other nodes:
    activations, residual additions)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    found: list[str] = []
    for node in graph.node:
        if node.op_type != "ReduceL2":
            continue
        frontier = [producer[node.input[0]]] if node.input[0] in producer else []
        for _ in range(depth):
            ahead = []
            for src in frontier:
                if src.op_type == "Conv":
                    found += [src.name] if src.name not in found else []
                else:
                    ahead += [producer[i] for i in src.input if i in producer]
            frontier = ahead
    return found


def _restated(src: Path, dst: Path, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> None:
    """The f32 export in ``src`` with its branch statistics ``old`` replaced by ``new``, into ``dst``. The exporter
    folds them into scalar constants of the graph; each is found by its exact value (and must be found once)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src / "model.onnx"))
    scalars = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and not i.dims]
    for key in ("branch_loc", "branch_scale"):
        for i, (was, now) in enumerate(zip(np.asarray(old[key], np.float32), np.asarray(new[key], np.float32),
                                           strict=True)):
            hits = [t for t in scalars if numpy_helper.to_array(t) == was]
            if len(hits) != 1:
                raise RuntimeError(f"{src / 'model.onnx'}: {key}[{i}] = {was} is held by {len(hits)} constants of "
                                   "the graph, expected 1; export the model again")
            hits[0].CopyFrom(numpy_helper.from_array(now, hits[0].name))
    dst.mkdir(parents=True)
    onnx.save(model, str(dst / "model.onnx"))
    shutil.copy(src / "metadata.json", dst / "metadata.json")


def _build(variant: str, src: Path, dst: Path, feeds: list[dict], ignored: list[str]) -> None:
    """The ``variant`` copy of the f32 export in ``src``, written into ``dst`` (``ignored``: layers kept in f32)."""
    backend, precision = VARIANTS[variant]
    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / "metadata.json").read_text())
    meta.update(variant=variant, precision=precision, f32_layers=ignored)
    quiet = contextlib.redirect_stdout(io.StringIO())
    if variant == "onnxruntime-int8":
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.feeds = iter(feeds)

            def get_next(self) -> dict | None:
                return next(self.feeds, None)

        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = dst / "pre.onnx"  # ONNX Runtime's advised pre-processing: shapes inferred, graph optimised
        quant_pre_process(src / "model.onnx", pre, skip_symbolic_shape=True)
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(pre, dst / "model.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=ORT_OPS, nodes_to_exclude=ignored or None)
        pre.unlink()
    else:
        import openvino as ov

        xml = src / "model.xml"
        model = ov.Core().read_model(str(xml)) if xml.is_file() else ov.convert_model(str(src / "model.onnx"))
        if precision == "int8":
            import nncf
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            nncf.set_log_level(logging.WARNING)  # its handler writes to the stdout of import time: not quieted above
            # OpenVINO names a biased convolution's Convolution "<onnx node>/WithoutBiases" (its Add keeps the name)
            names = [f"{n}/WithoutBiases" for n in ignored]
            scope = nncf.IgnoredScope(names=names, validate=False) if ignored else None
            # MIXED: asymmetric activations (as ONNX Runtime's), the detector's features are not centred. Ranges
            # from the calibration's global minima and maxima (as ONNX Runtime's MinMax): NNCF's default for
            # activations averages each batch's, which clips the pseudo-anomalies' headroom (docs/speed.md)
            ranges = nncf.AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
            with quiet:
                model = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), ignored_scope=scope,
                                      preset=nncf.QuantizationPreset.MIXED, advanced_parameters=ranges)
        save_openvino(model, dst / "model.xml")
    write_text(json.dumps(meta, indent=2), dst / "metadata.json")


def make_variant(variant: str, scorer, ref: NormalReference, export: Path, clips,
                 train: dict[str, tuple[int, int]], val: dict[str, tuple[int, int]], percentile: float,
                 frames: int = CALIBRATION_FRAMES) -> Check:
    """Make ``variant`` of the f32 export in ``export`` (the model of ``scorer``, its reference ``ref``) into
    ``export/<variant>``: calibrated on ``frames`` frames of ``train`` (the training ranges of ``clips``), its
    reference fitted and its check run on the hold-out ``val`` (see the module docstring). Returns its check;
    the variant is written either way (one that failed is kept to show why, and never used)."""
    reason = missing(variant)
    if reason:
        raise UsageError(reason)
    backend, precision = VARIANTS[variant]
    held = sorted(val.items())
    f32 = Runtime(backend, export)
    scorer.use(f32)
    try:
        f32_out, f32_pseudo = _score(scorer, clips, held), _score(scorer, clips, held, pseudo=True)
    finally:
        scorer.use(None)
    f32_check = (f32_out, *(_frame_scores(o, ref.state, ref.per_position) for o in (f32_out, f32_pseudo)))
    feeds = record_feeds(scorer, f32, clips, spread_runs(train, frames, RUN_FRAMES)) if precision == "int8" else []
    ladder = [[]] + ([compared_layers(export / "model.onnx")] if precision == "int8" else [])
    for ignored in ladder:
        t0 = time.perf_counter()
        check = _attempt(variant, scorer, ref, export, feeds, clips, held, f32_check, percentile, ignored)
        log.info(f"{variant}: {check.line()} ({time.perf_counter() - t0:.0f} s)")
        if check.passed:
            break
    return check


def _attempt(variant, scorer, ref: NormalReference, export: Path, feeds, clips, held, f32: tuple, percentile,
             ignored: list[str]) -> Check:
    """One try at ``variant``: build, fit its reference, check; written into ``export/<variant>``."""
    backend = VARIANTS[variant][0]
    model = scorer.model
    with tempfile.TemporaryDirectory(dir=export, prefix=f".{variant}-") as tmp:
        tmp = Path(tmp)
        _build(variant, export, tmp / "copy", feeds, ignored)
        scorer.use(Runtime(backend, tmp / "copy"))
        try:
            out = _score(scorer, clips, held)
            state = {k: np.asarray(v) for k, v in ref.state.items()}
            if model.branches:  # refit the branch statistics to the copy's own branch scores, and make it again
                loc, scale = model.branch_loc.cpu(), model.branch_scale.cpu()
                # the graph standardised them with the f32 statistics (the speed cue's score comes after them)
                raw = out["branches"][:, :len(model.branches)] * scale + loc
                refit = copy.deepcopy(model).cpu()
                refit.set_branch_stats({b: raw[:, i] for i, b in enumerate(model.branches)})
                state.update(branch_loc=refit.branch_loc.numpy(), branch_scale=refit.branch_scale.numpy())
                _restated(export, tmp / "f32", {"branch_loc": loc.numpy(), "branch_scale": scale.numpy()}, state)
                shutil.rmtree(tmp / "copy")
                _build(variant, tmp / "f32", tmp / "copy", feeds, ignored)
                scorer.use(Runtime(backend, tmp / "copy"))
                out = _score(scorer, clips, held)
            out_pseudo = _score(scorer, clips, held, pseudo=True)
        finally:
            scorer.use(None)
        if model.has_position_stats:
            loc, scale = position_statistics(out["maps"])
            state.update(pos_loc=loc.numpy(), pos_scale=scale.numpy())
        scores = _frame_scores(out, state, ref.per_position)
        check = compare(f32, (out, scores, _frame_scores(out_pseudo, state, ref.per_position)), percentile, ignored)
        NormalReference(scores, ref.settings, ref.per_position, state, ref.model, ref.branches).save(
            tmp / "copy" / "reference.npz")
        write_text(json.dumps(asdict(check), indent=2), tmp / "copy" / CHECK_FILE)
        final = export / variant
        if final.exists():
            shutil.rmtree(final)
        (tmp / "copy").replace(final)
    return check
