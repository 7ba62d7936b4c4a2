"""Video decoding: a file and frame indices in, uint8 RGB frames ``[T, H, W, 3]`` out.

PyAV (FFmpeg bundled in its wheel) is the default backend. torchcodec is optional (extra
``[torchcodec]``); it needs system FFmpeg libraries and a build matching the installed torch.
``frames`` reads videos stored as folders of frame images (the frame-extracted copies of SSv2
and Kinetics that many training codes use), decoding only the wanted frames with torchvision.

The PyAV reader first demuxes the video stream without decoding it, which gives the exact frame
count (WebM/VP9 files declare none) and the keyframe positions. Decoding then seeks once to the
last keyframe before the first wanted frame and stops after the last one, so only the frames the
sampler needs (and their GOP prefix) are decoded, and only the wanted ones are converted to RGB.
"""

from __future__ import annotations

import bisect
import functools
import io
import itertools
import json
import os
import re
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

Backend = Literal["pyav", "torchcodec", "frames"]
BACKENDS = ("pyav", "torchcodec", "frames")
# The frame files a frame folder may hold (what torchvision's decode_image reads).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# What `data frames` leaves in the folder of a video it could not decode, instead of frames: the
# video stays a bad one for the datasets that read the folders, rather than a missing one.
EXTRACTION_FAILED = "bad_video.json"


class VideoDecodeError(Exception):
    """A video that cannot be used: unreadable, truncated, without a video stream, too short."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class DecoderUnavailable(RuntimeError):
    """The requested decoding backend cannot be loaded (a set-up problem, not a bad video)."""


class VideoReader(Protocol):
    path: str
    num_frames: int
    fps: float | None  # frames per second, None where the video does not say (frame folders)

    def get_frames(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed): uint8 [len(indices), H, W, 3]."""
        ...


def open_video(path: str | Path, backend: Backend = "pyav") -> VideoReader:
    """Open a video for random frame access; raises ``VideoDecodeError`` for a bad file. A
    folder is read as frame images whatever the backend (a file decoder cannot open one), and an
    image file as a video of one frame."""
    if backend == "frames" or os.path.isdir(path):
        return FrameFolderReader(path)
    if _is_image(str(path)) and os.path.isfile(path):
        return FrameFolderReader(path, image=True)
    if backend == "pyav":
        return PyAVReader(path)
    if backend == "torchcodec":
        return TorchCodecReader(path)
    raise ValueError(f"unknown decoder backend {backend!r}; choose {', '.join(BACKENDS)}")


class PyAVReader:
    """Exact-count, seek-once PyAV reader (see the module docstring)."""

    def __init__(self, path: str | Path):
        import av  # here, not at import: runs that decode no video need no PyAV

        self.path = str(path)
        try:
            with av.open(self.path) as container:
                stream = _main_video_stream(container)
                if stream is None:
                    raise VideoDecodeError(path, "no video stream")
                self._stream_index = stream.index
                stored, file_end = [], None
                # Every stream's packets, to know where the file's data ends; flush packets carry
                # no data.
                for packet in container.demux():
                    if not packet.size:
                        continue
                    file_end = _later(file_end, _packet_end(packet))
                    if packet.stream.index == stream.index:
                        stored.append((packet.pts, packet.is_keyframe, packet.is_discard))
                packets = _packets_with_frames(stored)
                declared_frames = stream.frames
                declared_end = _declared_end(container)
                reorders = bool(getattr(stream.codec_context, "has_b_frames", False))
                rate = stream.average_rate or stream.guessed_rate
        except (av.FFmpegError, OSError) as error:
            raise VideoDecodeError(path, _why_unreadable(self.path, error)) from error

        self.num_frames = len(packets)
        # Cut mid-GOP: decoding from the start skips to the first keyframe, as counting did.
        keys = [key for _, key, _ in stored]
        self._starts_mid_gop = any(keys) and not keys[0]
        self.fps = float(rate) if rate else None
        if self.num_frames == 0:
            raise VideoDecodeError(path, "no video frames")
        if declared_frames and len(stored) < declared_frames:
            raise VideoDecodeError(
                path, f"truncated: {len(stored)} of {declared_frames} declared frames present"
            )
        # Presentation order: packets come in decode order, B-frames make the two differ.
        pts = [p for p, _ in packets]
        # B-frames whose packets' timestamps still rise in decode order: the container made them
        # up (H.264 in AVI), they are no presentation times.
        made_up = reorders and all(a < b for a, b in itertools.pairwise(pts) if None not in (a, b))
        # Without true, unique timestamps frames are counted from the start and never seeked to.
        self._has_pts = None not in pts and len(set(pts)) == len(pts) and not made_up
        self._pts = sorted(pts) if self._has_pts else []
        self._index_of_pts = {p: i for i, p in enumerate(self._pts)}
        self._keyframes = sorted(
            self._index_of_pts[p] for p, key in packets if key and self._has_pts
        )
        # WebM stores no frame count; a cut-off file still declares its full duration, while its
        # packets (of every stream: a video may end before its sound) stop short of it.
        cut_short = declared_end is not None and file_end is not None and rate
        if cut_short and declared_end - file_end > 2 / float(rate):
            raise VideoDecodeError(
                path,
                f"truncated: its data ends at {file_end:.2f} s, its header says "
                f"{declared_end:.2f} s",
            )

    def get_frames(self, indices: np.ndarray | list[int]) -> np.ndarray:
        import av

        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("no frame indices given")
        if min(indices) < 0 or max(indices) >= self.num_frames:
            raise IndexError(f"frame indices {indices} out of range for {self.num_frames} frames")
        wanted = set(indices)
        first = min(wanted)
        # Decoding starts at the last keyframe at or before the first wanted frame.
        start_key = 0
        if self._keyframes:
            start_key = self._keyframes[max(bisect.bisect_right(self._keyframes, first) - 1, 0)]
        try:
            try:
                decoded = self._decode(wanted, start_key)
            except _TimestampsOutOfOrder:
                # Timestamps the container made up in decode order (H.264 with B-frames in AVI):
                # frames are counted from the start instead, for this video from now on.
                self._has_pts, self._keyframes, start_key = False, [], 0
                decoded = self._decode(wanted, 0)
            if first not in decoded and start_key > 0:
                # The container seeked past the keyframe it was asked for: decode from the start.
                decoded = self._decode(wanted, 0)
        except av.FFmpegError as error:
            raise VideoDecodeError(self.path, f"decoding failed: {_message(error)}") from error
        missing = wanted - decoded.keys()
        if missing:
            raise VideoDecodeError(
                self.path,
                f"truncated: frame {min(missing)} of {self.num_frames} could not be decoded",
            )
        return np.stack([decoded[i] for i in indices])

    def _decode(self, wanted: set[int], start_key: int) -> dict[int, np.ndarray]:
        import av

        last = max(wanted)
        decoded: dict[int, np.ndarray] = {}
        with av.open(self.path) as container:
            stream = container.streams[self._stream_index]
            if start_key > 0:
                container.seek(self._pts[start_key], stream=stream, backward=True)
            packets = container.demux(stream)
            if start_key == 0 and self._starts_mid_gop:
                # Fed the packets before it, a decoder fails (VP9) or makes up their frames.
                packets = itertools.dropwhile(lambda packet: not packet.is_keyframe, packets)
            frames = (frame for packet in packets for frame in packet.decode())
            previous = None
            for position, frame in enumerate(frames):
                if self._has_pts and frame.pts is not None:
                    # Frames come out in presentation order: falling timestamps are not theirs.
                    if previous is not None and frame.pts <= previous:
                        raise _TimestampsOutOfOrder
                    previous = frame.pts
                index = self._index_of_pts.get(frame.pts) if self._has_pts else position
                if index is None:
                    continue
                if index in wanted:
                    decoded[index] = _upright(frame)
                if index >= last:
                    break
        return decoded


def _packets_with_frames(
    stored: list[tuple[int | None, bool, bool]],
) -> list[tuple[int | None, bool]]:
    """(pts, is_keyframe) of the packets that give frames, from a stream's (pts, is_keyframe,
    is_discard) in decode order.

    A stream cut mid-GOP (a clip copied out of a longer video) starts with frames whose keyframe
    is gone, and in an open GOP the frames shown before its first keyframe need one that is gone
    too: no decoder gives them (players start at the first keyframe), so they are not counted.
    Discard-flagged packets (before an MP4 edit list's start) give no frames either."""
    first_key = next((i for i, (_, key, _) in enumerate(stored) if key), 0)
    start = stored[first_key][0] if stored else None
    return [
        (pts, key)
        for pts, key, discard in stored[first_key:]
        if not discard and (pts is None or start is None or pts >= start)
    ]


def _main_video_stream(container):
    """The video stream players show, or None: FFmpeg's best one (``av_find_best_stream``:
    default-flagged, then more than one frame, ...), which may come after a one-frame cover
    picture. An attached picture (an audio file's cover art) is never the video."""
    import av

    # PyAV 13 added best(), later ones the dispositions: an older PyAV reads the first stream.
    attached_pic = getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0)

    def is_video(stream) -> bool:
        return not getattr(stream, "disposition", 0) & attached_pic

    best = container.streams.best("video") if hasattr(container.streams, "best") else None
    if best is not None and is_video(best):
        return best
    return next(filter(is_video, container.streams.video), None)


def _why_unreadable(path: str, error: Exception) -> str:
    """Why FFmpeg could not read ``path``, in one line: for the files its message calls only
    "invalid data", what is wrong with them."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "cannot read: empty file (0 bytes)"
    if _is_mp4_without_index(path):
        return (
            "incomplete: an MP4 without its index (moov box), as an interrupted download, "
            "copy or recording leaves it"
        )
    return f"cannot read: {_message(error)}"


def _message(error: Exception) -> str:
    """An FFmpeg or OS error's own words, without its error number and file name."""
    return getattr(error, "strerror", None) or str(error)


def _is_mp4_without_index(path: str) -> bool:
    """Whether ``path`` starts as an MP4 (an ``ftyp`` box) but has no ``moov`` box among its
    top-level boxes: the index most writers put last, so a file cut short loses it. Reads only
    the boxes' headers."""
    offset = 0
    try:
        with open(path, "rb") as file:
            end = os.fstat(file.fileno()).st_size
            while offset + 8 <= end:
                file.seek(offset)
                header = file.read(8)
                box_size, kind = int.from_bytes(header[:4], "big"), header[4:]
                if kind == b"moov" or (offset == 0 and kind != b"ftyp"):
                    return False
                if box_size == 1:  # a 64-bit size follows the type
                    box_size = int.from_bytes(file.read(8), "big")
                if box_size == 0:  # the last box, to the end of the file
                    break
                if box_size < 8:
                    return False  # not boxes: not an MP4
                offset += box_size
    except OSError:
        return False
    return offset > 0


def _upright(frame) -> np.ndarray:
    """The frame as players show it: a phone's portrait video is stored landscape with a
    rotation to apply (counterclockwise, in its display matrix), a selfie camera's may be
    mirrored too. The quarter turns and flips are FFmpeg's (its ``-autorotate``): a matrix with a
    mirror in it would otherwise come out turned where it is only flipped."""
    image = frame.to_ndarray(format="rgb24")
    # Counterclockwise, as players turn the picture (FFmpeg's get_rotation, in [0, 360)).
    turn = round(-(getattr(frame, "rotation", 0) or 0)) % 360
    matrix = _display_matrix(frame)
    if matrix is None or turn % 90:  # no matrix, or an angle FFmpeg itself resamples: nearest
        upright = np.rot90(image, k=round(-turn / 90) % 4)
    else:
        a, c, d = matrix[0], matrix[3], matrix[4]  # 16.16 fixed point; their signs decide
        if turn == 90:  # a transposition, mirrored as the matrix says
            upright = np.rot90(image, k=-1) if c < 0 else image.transpose(1, 0, 2)
        elif turn == 270:
            upright = np.rot90(image, k=1) if c > 0 else image[::-1].transpose(1, 0, 2)[::-1]
        else:  # 0 or 180: each axis flipped on its own
            upright = image[:: -1 if d < 0 else 1, :: -1 if turn == 180 and a < 0 else 1]
    return np.ascontiguousarray(upright)  # no copy where the view is contiguous already


def _display_matrix(frame) -> np.ndarray | None:
    """The frame's 3 x 3 display matrix (FFmpeg's side data, int32, row by row), or None."""
    side_data = getattr(frame, "side_data", ())
    for entry in side_data:
        # PyAV up to 18.1.0 iterates the entries; 18.1.1 iterates their types, as a mapping.
        data = entry if hasattr(entry, "type") else side_data[entry]
        if str(data.type).endswith("DISPLAYMATRIX"):
            return np.frombuffer(bytes(data), dtype="<i4")
    return None


class _TimestampsOutOfOrder(Exception):
    """Decoded frames whose timestamps fall: the packets' were not presentation times."""


def _declared_end(container) -> float | None:
    """Where the container declares its content ends, in seconds, or None.

    Its duration counts from its first timestamp in most formats and from 0 in others
    (Matroska): of the two readings, the earlier end, so that an intact file is never called
    cut off (one that starts late and is cut a little may pass). A start before 0 (B-frame
    delay in MP4) is one reading only."""
    import av

    if not container.duration:
        return None
    start = (container.start_time or 0) / av.time_base
    duration = container.duration / av.time_base
    return start + duration if start < 0 or duration <= start else duration


def _packet_end(packet) -> float | None:
    """Where a packet's content ends, in seconds (None without a timestamp)."""
    stamp = packet.pts if packet.pts is not None else packet.dts
    if stamp is None or packet.time_base is None:
        return None
    return float((stamp + (packet.duration or 0)) * packet.time_base)


def _later(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@functools.cache
def _torchcodec_decoder_class() -> type:
    """torchcodec's ``VideoDecoder``, once it has decoded a probe video.

    Recent torchcodec versions load their FFmpeg-linked core only when the first decoder is made,
    so a failed import is not the only way it can be unusable.
    """
    try:
        from torchcodec.decoders import VideoDecoder

        VideoDecoder(_probe_video(), seek_mode="exact").get_frames_at([0])
    except Exception as error:  # ImportError, OSError or RuntimeError from its libraries
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DecoderUnavailable(
            f"the torchcodec decoder could not be loaded ({type(error).__name__}: {first_line}). "
            "It needs `pip install timematters[torchcodec]`, a torchcodec build that matches "
            "the installed torch (the PyPI wheel expects a CUDA torch), and system FFmpeg "
            "libraries (e.g. `apt install ffmpeg`). Set data.decoder=pyav to use PyAV instead."
        ) from error
    return VideoDecoder


def _probe_video() -> bytes:
    """A one-frame 16x16 MP4, encoded in memory with PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return buffer.getvalue()


def require_backend(backend: Backend) -> None:
    """Raise ``DecoderUnavailable``, saying what to do, when ``backend`` cannot be loaded."""
    if backend == "torchcodec":
        _torchcodec_decoder_class()
    elif backend not in BACKENDS:
        raise ValueError(f"unknown decoder backend {backend!r}; choose {', '.join(BACKENDS)}")


def torchcodec_available() -> bool:
    try:
        require_backend("torchcodec")
    except DecoderUnavailable:
        return False
    return True


class TorchCodecReader:
    """torchcodec's decoder in exact seek mode (it scans the file for the frame index)."""

    def __init__(self, path: str | Path):
        decoder_class = _torchcodec_decoder_class()
        self.path = str(path)
        if not Path(path).is_file():
            raise VideoDecodeError(path, "cannot read: no such file")
        try:
            self._decoder = decoder_class(self.path, seek_mode="exact", dimension_order="NHWC")
            self.num_frames = int(self._decoder.metadata.num_frames)
            self.fps = self._decoder.metadata.average_fps
        except (RuntimeError, ValueError) as error:
            raise VideoDecodeError(path, f"cannot read: {error}") from error
        if self.num_frames == 0:
            raise VideoDecodeError(path, "no video frames")

    def get_frames(self, indices: np.ndarray | list[int]) -> np.ndarray:
        indices = [int(i) for i in indices]
        if min(indices) < 0 or max(indices) >= self.num_frames:
            raise IndexError(f"frame indices {indices} out of range for {self.num_frames} frames")
        try:
            return self._decoder.get_frames_at(indices).data.numpy()
        except (RuntimeError, ValueError) as error:
            raise VideoDecodeError(self.path, f"decoding failed: {error}") from error


def _natural_key(name: str) -> list:
    """``frame_2`` before ``frame_10``: runs of digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_files(folder: str | Path) -> list[str]:
    """The frame images of a frame folder, in natural file-name order.

    Hidden files (macOS's ``._img_00001.jpg``) are not frames. A folder of RGB frames beside
    optical-flow images (MMAction2's rawframes: ``img_*``, ``flow_x_*``, ``flow_y_*``) gives its
    ``img_`` frames; other mixes of names are refused rather than read as one video."""
    kinds: dict[str, list[str]] = {}  # a file name with its numbers taken out -> its files
    for entry in os.scandir(folder):
        name = entry.name
        if entry.is_file() and not name.startswith(".") and _is_image(name):
            kinds.setdefault(re.sub(r"\d+", "#", name), []).append(entry.path)
    if len(kinds) > 1:
        rgb = [kind for kind in kinds if kind.lower().startswith(("img", "image", "frame", "rgb"))]
        if len(rgb) != 1:
            shown = ", ".join(sorted(kinds)[:4])
            raise VideoDecodeError(
                folder,
                f"frames named in {len(kinds)} ways ({shown}; # a number): one video's frames, "
                "one name pattern",
            )
        kinds = {rgb[0]: kinds[rgb[0]]}
    files = next(iter(kinds.values()), [])
    return sorted(files, key=lambda path: _natural_key(os.path.basename(path)))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def numbering_gap(files: list[str]) -> str | None:
    """Where a frame folder's numbering skips frames (``00012`` after ``00010``), or None.

    Frames are read by position, so a frame lost in extraction silently shortens the motion
    between its neighbours; a constant step (every other frame extracted) is not a gap. Only
    ``data check`` asks: training reads the frames there are.
    """
    numbers = []
    for file in files:
        digits = re.findall(r"\d+", os.path.basename(file))
        if not digits:
            return None  # not numbered: nothing to check
        numbers.append(int(digits[-1]))
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    if not steps:
        return None
    usual = min(steps)
    for position, step in enumerate(steps):
        if step != usual:
            before, after = (os.path.basename(f) for f in files[position : position + 2])
            return f"frame numbering skips from {before} to {after} (frames missing?)"
    return None


def is_frame_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder of frame images: it holds images and no other files (hidden
    ones aside), so that a folder of videos with a thumbnail, or a report's folder of plots,
    is not taken for one."""
    if not os.path.isdir(path):
        return False
    names = [e.name for e in os.scandir(path) if e.is_file() and not _system_file(e.name)]
    return bool(names) and all(os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS for n in names)


def _system_file(name: str) -> bool:
    """A file the system leaves in a folder of pictures: hidden ones, Windows' thumbnail cache."""
    return name.startswith(".") or name.lower() in ("thumbs.db", "desktop.ini")


class FrameFolderReader:
    """A video stored as a folder of frame images (``img_00001.jpg``, ...), one per frame in
    natural file-name order, or one image file (a one-frame video: ImageNet-9's, a photo for
    ``predict``); only the frames asked for are read and decoded."""

    def __init__(self, path: str | Path, *, image: bool = False):
        self.path = str(path)
        if image:  # (a video list of data.decoder=frames names folders: a frame is a mistake)
            self.files = [self.path]
        elif not Path(path).is_dir():
            raise VideoDecodeError(path, "not a folder of frame images (data.decoder=frames)")
        else:
            self.files = frame_files(path)
        if not self.files:
            failed = Path(path, EXTRACTION_FAILED)
            if not image and failed.is_file():
                raise VideoDecodeError(path, _extraction_failure(failed))
            names = ", ".join(IMAGE_EXTENSIONS)
            raise VideoDecodeError(path, f"no frame images ({names}) in the folder")
        self.num_frames = len(self.files)
        self.fps = None  # images carry no frame rate

    def get_frames(self, indices: np.ndarray | list[int]) -> np.ndarray:
        import torch
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2.functional import to_dtype

        decoded: dict[int, np.ndarray] = {}
        for index in sorted(set(int(i) for i in indices)):
            file = self.files[index]
            try:
                image = decode_image(file, mode=ImageReadMode.RGB)  # [3, H, W] uint8
            except (RuntimeError, ValueError) as error:
                # torchvision's own words, without the C++ function and source line before them.
                words = re.sub(r"^\w+, \S+:\d+, ", "", str(error).splitlines()[0])
                raise VideoDecodeError(
                    self.path, f"frame {os.path.basename(file)}: {words}"
                ) from None
            image = to_dtype(image, torch.uint8, scale=True)  # 16-bit PNGs to 8 bits
            decoded[index] = image.permute(1, 2, 0).numpy()
        sizes = {frame.shape for frame in decoded.values()}
        if len(sizes) > 1:
            shown = ", ".join(f"{h}x{w}" for h, w, _ in sorted(sizes))
            raise VideoDecodeError(self.path, f"frames of different sizes ({shown})")
        return np.stack([decoded[int(i)] for i in indices])


def _extraction_failure(record: Path) -> str:
    """Why the video of a frame folder that ``data frames`` left empty could not be decoded."""
    try:
        failure = json.loads(record.read_text(encoding="utf-8"))
        video, reason = failure["path"], failure["reason"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"no frames: its video could not be decoded when they were extracted ({record})"
    return f"no frames: its video {video} could not be decoded when they were extracted: {reason}"
