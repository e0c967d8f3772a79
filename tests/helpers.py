"""Tiny synthetic datasets for tests: a few seeded 16-frame 64x64 clips in each layout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import numpy as np
from PIL import Image

from vad.config import ModelConfig, RunConfig, ScoreConfig, TrainConfig

H, W, T = 48, 64, 16


def frames(seed: int, n: int = T) -> np.ndarray:
    """(n, H, W, 3) uint8: a smooth gradient with a moving square, so frames differ."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, W, dtype=np.float32)[None, :, None].repeat(H, 0).repeat(3, 2)
    out = np.empty((n, H, W, 3), np.uint8)
    for t in range(n):
        f = base + rng.normal(0, 3, base.shape)
        x = (4 + 3 * t) % (W - 12)
        f[10:22, x:x + 12] = (220, 60, 60)
        out[t] = f.clip(0, 255).astype(np.uint8)
    return out


def write_video(path: Path, data: np.ndarray, fps: int = 10, codec: str = "mpeg4") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = data.shape[2], data.shape[1], "yuv420p"
        s.bit_rate = 2_000_000
        for f in data:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def write_frames(folder: Path, data: np.ndarray, ext: str = ".jpg", start: int = 0, width: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(data):
        Image.fromarray(f).save(folder / f"{t + start:0{width}d}{ext}", quality=95)
    return folder


def labels_for(n: int, a: int, b: int) -> np.ndarray:
    lab = np.zeros(n, np.uint8)
    lab[a:b] = 1
    return lab


def make_shanghaitech(root: Path, pixel: bool = True) -> Path:
    """2 scenes: training 01_001, 01_002, 02_001 (videos); testing 01_0001, 02_0001 (JPEG folders)."""
    for i, name in enumerate(["01_001", "01_002", "02_001"]):
        write_video(root / "training" / "videos" / f"{name}.avi", frames(i))
    for i, (name, span) in enumerate([("01_0001", (4, 9)), ("02_0001", (0, 3))]):
        write_frames(root / "testing" / "frames" / name, frames(10 + i))
        lab = labels_for(T, *span)
        (root / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
        np.save(root / "testing" / "test_frame_mask" / f"{name}.npy", lab)
        if pixel:
            (root / "testing" / "test_pixel_mask").mkdir(parents=True, exist_ok=True)
            pm = np.zeros((T, H, W), np.uint8)
            pm[lab.astype(bool), 5:10, 5:10] = 1
            np.save(root / "testing" / "test_pixel_mask" / f"{name}.npy", pm)
    return root


AVENUE_SPANS = {1: (3, 8), 2: (6, 11)}  # 0-based [a, b) anomalous frames of each test video's masks


def make_avenue(root: Path, archives: bool = False, published: dict[int, list[tuple[int, int]]] | None = None) -> Path:
    """Avenue with 2 training and 2 test videos. Flat layout, or (``archives``) as its two downloads unpack:
    ``Avenue Dataset/{training,testing}_videos`` beside ``ground_truth_demo/testing_label_mask``.

    ``N_label.mat`` holds ``volLabel`` as the real files do: a 1xT MATLAB cell (object array) of HxW masks.
    ``published`` also writes ano_pred_cvpr2018's ``avenue.mat``: ``gt``, a 1xN cell of 2xK [start; end] (1-based).
    """
    import scipy.io

    videos = root / "Avenue Dataset" if archives else root
    labels = root / "ground_truth_demo" / "testing_label_mask" if archives else root / "testing_label_mask"
    labels.mkdir(parents=True, exist_ok=True)
    for i in (1, 2):
        write_video(videos / "training_videos" / f"{i:02d}.avi", frames(i))
        write_video(videos / "testing_videos" / f"{i:02d}.avi", frames(20 + i))
        vol = np.empty((1, T), dtype=object)
        a, b = AVENUE_SPANS[i]
        for t in range(T):
            m = np.zeros((H, W), np.uint8)
            if a <= t < b:
                m[2:6, 2:6] = 1
            vol[0, t] = m
        scipy.io.savemat(labels / f"{i}_label.mat", {"volLabel": vol})
    if published is not None:
        gt = np.empty((1, len(published)), dtype=object)
        for k, spans in enumerate(published.values()):
            gt[0, k] = np.array(spans, dtype=np.float64).T.reshape(2, -1)  # MATLAB doubles, one column per event
        scipy.io.savemat(root / "avenue.mat", {"gt": gt})
    return root


def ucsd_m(spans: list[list[tuple[int, int]]]) -> str:
    """A UCSD ``UCSDpedN.m`` file as the dataset ships it: 1-based inclusive ranges, one line per test clip."""
    lines = ["TestVideoFile = {};"]
    for clip in spans:
        lines.append("TestVideoFile{end+1}.gt_frame = [" + ", ".join(f"{a}:{b}" for a, b in clip) + "];")
    return "\r\n".join(lines) + "\r\n"  # the real files have DOS line ends


PED2_SPANS = [[(5, 9)], [(1, 3), (12, 16)]]  # clip 2: a multi-range line, as in the real files
PED1_SPANS = [[(2, 6)], [(4, 7), (10, 16)], [(1, 16)]]
PED2_M = ucsd_m(PED2_SPANS)


def labels_from_spans(spans: list[tuple[int, int]], n: int = T) -> np.ndarray:
    lab = np.zeros(n, np.uint8)
    for a, b in spans:
        lab[a - 1 : b] = 1
    return lab


def write_mask_folder(folder: Path, labels: np.ndarray, size: tuple[int, int] = (H, W)) -> Path:
    """UCSD-style ``_gt`` folder: ``001.bmp ..``, a white square on frames whose label is 1."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, on in enumerate(labels):
        m = np.zeros(size, np.uint8)
        if on:
            m[20:30, 20:30] = 255
        Image.fromarray(m).save(folder / f"{t + 1:03d}.bmp")
    return folder


def make_ucsd(root: Path, variant: str, spans: list[list[tuple[int, int]]], gt_clips: set[int],
              with_m: bool = True, n_train: int = 2) -> Path:
    """A UCSD ``UCSDpedN`` folder: grey ``.tif`` frames from 001, ``_gt`` masks for the test clips in
    ``gt_clips`` (1-based), and ``Test/UCSDpedN.m`` in the real syntax."""
    for i in range(1, n_train + 1):
        gray = frames(30 + i).mean(-1).astype(np.uint8)[..., None].repeat(3, -1)
        write_frames(root / "Train" / f"Train{i:03d}", gray, ext=".tif", start=1)
    for i, clip_spans in enumerate(spans, start=1):
        gray = frames(40 + i).mean(-1).astype(np.uint8)[..., None].repeat(3, -1)
        write_frames(root / "Test" / f"Test{i:03d}", gray, ext=".tif", start=1)
        if i in gt_clips:
            write_mask_folder(root / "Test" / f"Test{i:03d}_gt", labels_from_spans(clip_spans))
    if with_m:
        (root / "Test" / f"UCSD{variant}.m").write_bytes(ucsd_m(spans).encode())
    return root


def make_ped2(root: Path, with_m: bool = True, with_gt: bool = True) -> Path:
    """Ped2: 2 training, 2 test clips, ``_gt`` masks for every test clip (as in the real Ped2)."""
    return make_ucsd(root, "ped2", PED2_SPANS, {1, 2} if with_gt else set(), with_m=with_m)


def make_ped1(root: Path) -> Path:
    """Ped1: 2 training, 3 test clips; only Test002 has ``_gt`` masks (the real Ped1 has them for 10 of 36)."""
    return make_ucsd(root, "ped1", PED1_SPANS, {2})


def paste_anomaly(data: np.ndarray, t0: int, t1: int, size: int = 16, row: int = 26) -> np.ndarray:
    """Copy of ``data`` with a blue/yellow checkerboard (unlike anything normal) in frames [t0, t1), its top at
    ``row`` (default: below the normal square's rows 10-22, where nothing normal ever is)."""
    out = data.copy()
    yy, xx = np.mgrid[:size, :size]
    board = np.where(((yy // 4 + xx // 4) % 2)[..., None] == 1, (30, 40, 220), (240, 230, 30)).astype(np.uint8)
    for t in range(t0, t1):
        y, x = row, 6 + 2 * (t - t0)
        out[t, y:y + size, x:x + size] = board
    return out


def make_anomaly_scene(root: Path, n_train: int = 4, frames_per_clip: int = 24, row: int = 26) -> Path:
    """ShanghaiTech layout with normal training videos and two test clips with a pasted anomaly (its top at
    ``row``: see :func:`paste_anomaly`)."""
    for i in range(n_train):
        write_video(root / "training" / "videos" / f"01_{i + 1:03d}.avi", frames(i, frames_per_clip))
    (root / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
    for j, span in enumerate([(6, 14), (0, 5)]):
        name = f"01_{j + 1:04d}"
        write_frames(root / "testing" / "frames" / name, paste_anomaly(frames(50 + j), *span, row=row))
        np.save(root / "testing" / "test_frame_mask" / f"{name}.npy", labels_for(T, *span))
    return root


def interrupt_training_after(monkeypatch, epochs: int) -> None:
    """Make ``vad.offline.train`` raise KeyboardInterrupt right after saving ``checkpoints/last.pt`` for the
    ``epochs``-th time, as a crash would; ``monkeypatch.undo()`` restores it."""
    import vad.offline.train as vt

    real_save, calls = vt.atomic_save, []

    def crash(obj, path):
        real_save(obj, path)
        if Path(path).name == "last.pt":
            calls.append(path)
            if len(calls) == epochs:
                raise KeyboardInterrupt

    monkeypatch.setattr(vt, "atomic_save", crash)


# The trained-model tests' config: the scene's 48x64 frames upsampled to 96x128 (the stride-16 level needs room),
# six epochs (RSTPM: four more for its discriminative stage), enough to separate the scene's pasted anomaly.
TINY = RunConfig(
    model=ModelConfig(input_height=96),
    # object_shift=0: the scene's anomaly is partly *where* it is (rows no normal object reaches), which object
    # shifts declare normal by design; tests/test_augment.py trains with them on a scene where it is *what*
    # train.amp off: trained in float32 on every machine (auto would pick bf16 on AMX, or where it measures faster),
    # so the accuracy and copy-check tests judge the same model everywhere; bf16 training has its own test
    train=TrainConfig(epochs=6, disc_epochs=4, batch_size=8, lr=3e-3, seed=0, object_shift=0.0, amp="off"),
    # float32 scoring, also where the CPU has AMX (whose default is bf16): the normal reference stored at training
    # is then the same on every machine, and tests that rescore "as trained" compare like with like
    score=ScoreConfig(batch_size=16, amp="off"),
)
SMALL = replace(TINY, model=replace(TINY.model, input_height=48))  # for tests of mechanics, not accuracy
AMPS = ("off", "bf16")  # scoring runs in float32, or bf16 where the CPU has AMX (and on CUDA): tests cover both


def tiny(method: str) -> RunConfig:
    return replace(TINY, model=replace(TINY.model, method=method))


def frame_auc(scores: dict[str, np.ndarray], clips) -> float:
    """Frame AUC of ``scores`` over ``clips``' labels (all frames pooled)."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([c.labels for c in clips]).astype(bool)
    return float(roc_auc_score(y, np.concatenate([scores[c.name] for c in clips])))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a loopback stream, broker or server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def copy_run(src: Path, dst: Path, data: Path) -> Path:
    """A copy of the run folder ``src`` (its model, and its exports when it has them) at ``dst``, configured with
    :data:`TINY` on the ShanghaiTech-layout ``data``."""
    import shutil

    from vad.offline.pipeline import save_config, with_data

    dst.mkdir(parents=True)
    shutil.copy(src / "model.pt", dst / "model.pt")
    if (src / "export").is_dir():
        shutil.copytree(src / "export", dst / "export")
    save_config(with_data(TINY, data, "shanghaitech"), dst / "config.yaml")
    return dst
