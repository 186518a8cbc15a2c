"""Writing rendered frames to ``.mp4`` (H.264) or ``.gif`` files, headless."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["LazyFrames", "write_video"]


class LazyFrames(Sequence):
    """A sequence of ``count`` frames, each painted by ``paint(t)`` when it is read.

    Painters return one of these instead of a list so that a video is encoded frame by frame
    with one frame in memory (171 frames of 640x360 held at once were 118 MB, the largest
    allocation of ``simdiff train``). Reading a frame twice paints it twice.
    """

    def __init__(self, count: int, paint: Callable[[int], np.ndarray]) -> None:
        self._count = int(count)
        self._paint = paint

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[t] for t in range(*index.indices(self._count))]
        t = index + self._count if index < 0 else index
        if not 0 <= t < self._count:
            raise IndexError(f"frame {index} out of range for {self._count} frames")
        return self._paint(t)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self._paint(t) for t in range(self._count))

_SUFFIXES = (".mp4", ".gif")


def write_video(frames: Sequence[np.ndarray], path: str | Path, *, fps: int = 30) -> Path:
    """Write RGB frames to a video file whose format is chosen by the suffix of ``path``.

    ``.mp4`` is encoded with libx264 (yuv420p, which every player reads); frames with an odd
    width or height are padded by one replicated pixel row/column, because yuv420p needs even
    sizes. ``.gif`` loops forever; its frame delay is stored in hundredths of a second, so the
    played rate is only approximately ``fps``, and Pillow merges consecutive identical frames
    into one longer frame.

    Args:
        frames: The frames, each an [H, W, 3] ``uint8`` array, all of the same shape. A
            :class:`LazyFrames` is painted, checked and encoded one frame at a time.
        path: Output file, ending in ``.mp4`` or ``.gif``. Parent directories are created.
        fps: Frames per second (> 0).

    Returns:
        The path written, as a ``Path``.

    Raises:
        ValueError: If ``path`` has another suffix, ``frames`` is empty or holds arrays of the
            wrong shape or dtype, or ``fps`` is not positive.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"path: suffix must be one of {_SUFFIXES}, got {path.suffix!r}")
    if len(frames) == 0:
        raise ValueError("frames: must hold at least one frame, got an empty sequence")
    if not isinstance(fps, (int, np.integer)) or fps <= 0:
        raise ValueError(f"fps: must be a positive integer, got {fps!r}")
    first = frames[0]
    _check_frame(0, first, np.shape(first))
    if not isinstance(frames, LazyFrames):  # held frames are checked before anything is written
        for i, frame in enumerate(frames):
            _check_frame(i, frame, first.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    checked = (_check_frame(i, frame, first.shape) for i, frame in enumerate(frames))
    try:
        if suffix == ".mp4":
            _write_mp4(checked, first.shape, path, fps)
        else:
            _write_gif(checked, path, fps)
    except ValueError:  # a painted frame was malformed: leave no truncated video behind
        path.unlink(missing_ok=True)
        raise
    return path


def _check_frame(i: int, frame, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise ValueError(f"frames[{i}]: must be a uint8 numpy array")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape != shape:
        raise ValueError(
            f"frames[{i}]: must have shape [H, W, 3] equal to frames[0] {shape}, "
            f"got {frame.shape}"
        )
    return frame


def _write_mp4(frames: Iterator[np.ndarray], shape: tuple[int, ...], path: Path,
               fps: int) -> None:
    import imageio.v2 as imageio

    height, width = shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    # macro_block_size=1: we pad to even sizes ourselves, so imageio must not resize (it would
    # rescale to multiples of 16 and blur the lines).
    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=8,
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            writer.append_data(np.pad(frame, pad, mode="edge") if any(p[1] for p in pad) else frame)
    finally:
        writer.close()


def _write_gif(frames: Iterator[np.ndarray], path: Path, fps: int) -> None:
    from PIL import Image

    images = (Image.fromarray(frame) for frame in frames)
    next(images).save(
        path,
        format="GIF",
        save_all=True,
        append_images=images,
        duration=1000.0 / fps,
        loop=0,
    )
