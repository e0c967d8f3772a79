"""One decoding function for every source: :func:`iter_frames`.

Frames come out in bounded batches of ``uint8`` tensors shaped ``(B, 3, H, W)`` (RGB), so an
hour-long video is never held in memory at once. Backends:

- ``pyav`` (default for video files): FFmpeg through PyAV with frame threading.
- ``decord`` (optional extra ``vad[decord]``): random-access video reader.
- ``pil`` (default for non-JPEG frame folders): Pillow, any image format (``.tif``, ``.png``, ...).
- ``torchvision`` (default for JPEG folders): ``torchvision.io.decode_jpeg``; with ``device="cuda"`` it
  decodes on the GPU (nvJPEG) and the batch arrives already on the device.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from vad.errors import DecodeError
from vad.io.probe import frame_rotation, open_video, probe
from vad.io.records import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Clip, frames_clip

log = logging.getLogger(__name__)

BACKENDS = ("auto", "pyav", "decord", "pil", "torchvision")
VIDEO_BACKENDS = ("pyav", "decord")
FRAME_BACKENDS = ("pil", "torchvision")


def as_clip(source: Clip | Path | str) -> Clip:
    """Turn a path (video file or frame folder) into a :class:`Clip`; pass clips through."""
    if isinstance(source, Clip):
        return source
    path = Path(source)
    if path.is_dir():
        return frames_clip(path, name=path.name)
    if not path.exists():
        raise DecodeError(f"{path}: no such file or folder; expected a video file or a folder of frames")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise DecodeError(
            f"{path}: not a video file (suffix {path.suffix!r}); expected one of {sorted(VIDEO_EXTENSIONS)} "
            "or a folder of frames"
        )
    return Clip(name=path.stem, path=path, kind="video")


def resolve_backend(clip: Clip, backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown decoding backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        if clip.kind == "video":
            return "pyav"
        # JPEG folders: torchvision's libjpeg-turbo path beat Pillow 1.5x on 2 CPU cores
        # (benchmarks/decode_throughput.py), and on CUDA it decodes on the GPU.
        all_jpeg = clip.frame_paths is not None and all(
            p.suffix.lower() in (".jpg", ".jpeg") for p in clip.frame_paths
        )
        return "torchvision" if all_jpeg else "pil"
    allowed = VIDEO_BACKENDS if clip.kind == "video" else FRAME_BACKENDS
    if backend not in allowed:
        raise ValueError(f"backend {backend!r} cannot decode {clip.kind} clip {clip.path}; use one of {allowed}")
    return backend


def iter_frames(
    source: Clip | Path | str,
    *,
    batch_size: int = 64,
    backend: str = "auto",
    start: int = 0,
    stop: int | None = None,
    device: torch.device | str | None = None,
    threads: int = 0,
    partial: bool = False,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first_index, frames)`` with ``frames`` uint8 ``(B, 3, H, W)``, B <= ``batch_size``.

    ``start``/``stop`` select frames ``[start, stop)``. ``threads`` is the decoder thread count
    (0 = let the backend choose). Frames are on the CPU except for the ``torchvision`` backend with a
    CUDA ``device``. Video frames come out upright (the container's display rotation applied) and all of the
    first frame's size (a stream that changes size mid-way is resized to it, with a note naming the frame).
    Raises :class:`DecodeError` naming the file on unreadable, empty or truncated input; with ``partial`` a
    video that ends before the frame count its container declares (a partly recorded file) yields the frames
    that decode and stops, for the caller to count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"invalid frame range [{start}, {stop})")
    clip = as_clip(source)
    name = resolve_backend(clip, backend)
    if stop == start:
        return
    if name == "pyav":
        yield from _iter_pyav(clip.path, batch_size, start, stop, threads, partial)
    elif name == "decord":
        yield from _iter_decord(clip.path, batch_size, start, stop, threads)
    else:
        assert clip.frame_paths is not None
        if start >= len(clip.frame_paths):
            raise DecodeError(f"{clip.path}: start frame {start} is past the end ({len(clip.frame_paths)} frames)")
        paths = clip.frame_paths[start:stop]
        decode = _decode_pil if name == "pil" else _decode_torchvision
        for i in range(0, len(paths), batch_size):
            yield start + i, decode(paths[i : i + batch_size], device)


def _stack_hwc(arrays: list[np.ndarray]) -> torch.Tensor:
    # (B, H, W, 3) -> (B, 3, H, W) view: channels_last memory layout, no copy.
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


class _Upright:
    """A video's decoded frames as upright RGB arrays of one size: the first frame's, after its rotation."""

    def __init__(self, path: Path) -> None:
        self.path, self.size, self.noted = path, None, False

    def __call__(self, frame, index: int) -> np.ndarray:
        size = (frame.width, frame.height)  # as stored, before the rotation
        if self.size is None:
            self.size = size
        elif size != self.size:
            if not self.noted:
                log.warning(f"note: {self.path}: frame {index} is {size[0]}x{size[1]} while the video began at "
                            f"{self.size[0]}x{self.size[1]}; frames of another size are resized to "
                            f"{self.size[0]}x{self.size[1]}")
                self.noted = True
            rgb = frame.to_ndarray(format="rgb24", width=self.size[0], height=self.size[1])
            return np.rot90(rgb, frame_rotation(frame) // 90)
        return np.rot90(frame.to_ndarray(format="rgb24"), frame_rotation(frame) // 90)


def _iter_pyav(path: Path, batch_size: int, start: int, stop: int | None, threads: int, partial: bool = False):
    import av

    upright = _Upright(path)
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.thread_count = threads
        declared = int(stream.frames or 0)
        buf: list[np.ndarray] = []
        index = 0
        first = start
        try:
            for frame in container.decode(stream):
                if stop is not None and index >= stop:
                    break
                if index >= start:
                    buf.append(upright(frame, index))
                    if len(buf) == batch_size:
                        yield first, _stack_hwc(buf)
                        first += len(buf)
                        buf = []
                index += 1
        except av.error.FFmpegError as err:
            if not partial or index <= start:
                raise DecodeError(f"{path}: decoding failed after frame {index} ({err}); the file may be "
                                  "corrupt") from err
        if buf:
            yield first, _stack_hwc(buf)
    if index == 0:
        raise DecodeError(f"{path}: no frame could be decoded; the file is empty or corrupt")
    if stop is None and declared and (index > declared or (index < declared and not partial)):
        # Fewer frames: truncated. More: labels counted against the header would drift out of line.
        what = "truncated video" if index < declared else "frame count mismatch"
        raise DecodeError(f"{path}: {what}: the container declares {declared} frames but {index} decoded")
    if stop is not None and declared and index < min(stop, declared) and not partial:
        raise DecodeError(f"{path}: truncated video: frames [{start}, {stop}) asked, only {index} decoded")
    if index <= start:
        raise DecodeError(f"{path}: start frame {start} is past the end of the video ({index} frames)")


def _iter_decord(path: Path, batch_size: int, start: int, stop: int | None, threads: int):
    try:
        import decord
    except ImportError as err:
        raise ImportError("the decord backend needs the optional extra: pip install 'vad[decord]'") from err
    info = probe(path)  # clear errors for missing/empty/non-video files first
    declared = info.num_frames
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    except decord.DECORDError as err:
        raise DecodeError(f"{path}: decord cannot open this video ({err})") from err
    if len(reader) < min(declared, stop if stop is not None else declared):
        raise DecodeError(
            f"{path}: truncated video: the container declares {declared} frames but decord finds {len(reader)}"
        )
    if start >= len(reader):
        raise DecodeError(f"{path}: start frame {start} is past the end of the video ({len(reader)} frames)")
    end = len(reader) if stop is None else min(stop, len(reader))
    try:
        for i in range(start, end, batch_size):
            idx = list(range(i, min(i + batch_size, end)))
            try:
                batch = reader.get_batch(idx).asnumpy()  # (B, H, W, 3)
            except decord.DECORDError as err:
                raise DecodeError(f"{path}: decord failed on frames {idx[0]}..{idx[-1]} ({err})") from err
            frames = torch.from_numpy(batch).permute(0, 3, 1, 2)
            yield i, torch.rot90(frames, info.rotation // 90, dims=(2, 3)) if info.rotation else frames
    finally:
        del reader  # release the file and decoder threads even when the consumer stops early


def read_image(path: Path, mode: str = "RGB") -> np.ndarray:
    """An image file as uint8 ``(H, W, 3)`` (``mode="RGB"``) or ``(H, W)`` (``mode="L"``).

    16-bit greyscale (PNG/TIFF ``I;16``, or ``I`` with values in 0..65535) is scaled to 8 bits; Pillow's own
    conversion would clip it to 255 (a white frame). Float and other images without an 8-bit meaning are refused
    by name. 16-bit RGB PNGs already arrive as 8-bit ``RGB`` from Pillow.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I" (32-bit int)
                return _scale_16bit(np.asarray(img), img.mode, path, mode)
            if img.mode not in _EIGHT_BIT_MODES:
                raise DecodeError(
                    f"{path}: image mode {img.mode!r} has no 8-bit reading; expected an 8-bit or 16-bit image"
                )
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError) as err:
        raise DecodeError(f"{path}: cannot decode image ({err}); expected {sorted(IMAGE_EXTENSIONS)}") from err


_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La", "RGBa"})


def _scale_16bit(a: np.ndarray, pil_mode: str, path: Path, mode: str) -> np.ndarray:
    """16-bit samples ``(H, W)`` -> uint8 (``x * 255 / 65535``, rounded), greyscale or repeated to RGB."""
    if a.ndim != 2 or (a.size and (a.min() < 0 or a.max() > 65535)):
        raise DecodeError(
            f"{path}: {pil_mode} image with shape {a.shape} and values {a.min()}..{a.max()}; "
            "expected 16-bit greyscale samples in 0..65535"
        )
    grey = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=2)


def _decode_pil(paths: tuple[Path, ...], device=None) -> torch.Tensor:
    arrays = [read_image(p) for p in paths]
    _check_same_size(paths, arrays, lambda a: a.shape[:2])
    return _stack_hwc(arrays)


def _decode_torchvision(paths: tuple[Path, ...], device=None) -> torch.Tensor:
    return decode_jpeg_files(paths, read_jpeg_files(paths), device)


def read_jpeg_files(paths: Sequence[Path]) -> list[torch.Tensor]:
    """The encoded bytes of each JPEG file (uint8 1-D tensors): what a ``DataLoader`` worker sends so that the
    main process can decode a whole batch on the GPU (:func:`decode_jpeg_files`)."""
    data = []
    for p in paths:
        try:
            data.append(torch.from_numpy(np.fromfile(p, dtype=np.uint8)))
        except OSError as err:
            raise DecodeError(f"{p}: cannot read frame file ({err})") from err
        if data[-1].numel() == 0:
            raise DecodeError(f"{p}: file is empty (0 bytes); expected a JPEG frame")
    return data


def decode_jpeg_files(paths: Sequence[Path], data: list[torch.Tensor], device=None) -> torch.Tensor:
    """Decode the bytes of ``paths`` (from :func:`read_jpeg_files`) into uint8 ``(B, 3, H, W)`` RGB with
    ``torchvision.io.decode_jpeg``: libjpeg-turbo on the CPU, batched nvJPEG on a CUDA ``device`` (the result
    is then already on the device). A bad file is named."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device) if device is not None else torch.device("cpu")
    with warnings.catch_warnings():
        # torchvision >= 0.29 deprecates its image codecs in favour of TorchCodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            images = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)  # list of (3, H, W)
        except RuntimeError as err:
            for p, d in zip(paths, data, strict=True):  # find the file to name
                try:
                    decode_jpeg(d, mode=ImageReadMode.RGB)
                except RuntimeError as one:
                    raise DecodeError(f"{p}: cannot decode JPEG ({one})") from err
            raise DecodeError(f"JPEG decoding failed in {Path(paths[0]).parent} ({err})") from err
    _check_same_size(paths, images, lambda t: tuple(t.shape[-2:]))
    if device.type == "cpu":  # libjpeg-turbo's (H, W, 3) rows seen as (3, H, W): channels-last, as PIL's and PyAV's
        return _stack_hwc([i.permute(1, 2, 0).numpy() for i in images])
    return torch.stack(images)


def _check_same_size(paths, images, shape_of) -> None:
    first = shape_of(images[0])
    for p, img in zip(paths, images, strict=True):
        if shape_of(img) != first:
            raise DecodeError(f"{p}: frame size {shape_of(img)} differs from {first} of {paths[0].name}")


def first_frame(clip: Clip | Path | str) -> torch.Tensor:
    """A clip's first frame, uint8 ``(3, H, W)`` (upright)."""
    _, frames = next(iter(iter_frames(clip, batch_size=1, stop=1)))
    return frames[0]


def looks_grey(frame: torch.Tensor, tolerance: int = 6) -> bool:
    """Whether a uint8 ``(3, H, W)`` RGB frame is greyscale: its channels agree to within ``tolerance`` grey levels
    at 99 % of its pixels (greyscale video decoded to RGB: an infrared night camera, UCSD's footage)."""
    x = frame.to(torch.int16)
    spread = (x.amax(0) - x.amin(0)).flatten().float()
    return bool(torch.quantile(spread[:: max(1, len(spread) // 100_000)], 0.99) <= tolerance)
