"""Messy real-world files: which stream is the video, streams cut mid-GOP, unreadable files."""

import av
import numpy as np
import pytest
from videos import frame_numbers, numbered_frames, write_video

from timematters.data.video import VideoDecodeError, open_video


def _encode(stream, container, image: np.ndarray) -> None:
    container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))


def _add_cover(container, *, attached: bool = False):
    """A stream for a 32x32 JPEG picture: a thumbnail, cover art (``_write_cover`` writes it)."""
    cover = container.add_stream("mjpeg", rate=1)
    cover.width = cover.height = 32
    cover.pix_fmt = "yuvj420p"
    if attached:
        cover.disposition = av.stream.Disposition.attached_pic
    return cover


def _write_cover(container, cover) -> None:
    _encode(cover, container, np.zeros((32, 32, 3), np.uint8))
    container.mux(cover.encode())


def test_the_video_is_read_not_a_picture_stored_before_it(tmp_path):
    # It was read as a one-frame video ("too short: 1 frames"), predict classified the picture.
    path = tmp_path / "thumbnail_first.mkv"
    with av.open(str(path), "w") as container:
        cover = _add_cover(container)
        video = container.add_stream("libx264", rate=12, options={"g": "5"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        _write_cover(container, cover)
        for image in numbered_frames(16):
            _encode(video, container, image)
        container.mux(video.encode())
    reader = open_video(path)
    assert reader.num_frames == 16
    frames = reader.get_frames([15, 9])  # from a seek to the keyframe at 5
    assert frames.shape == (2, 48, 64, 3) and frame_numbers(frames) == [15, 9]
    assert frame_numbers(reader.get_frames([0])) == [0]


def test_a_sound_file_with_cover_art_has_no_video(tmp_path):
    # The cover is FFmpeg's best (its only) video stream; it was read as a one-frame video.
    path = tmp_path / "song.mp4"
    with av.open(str(path), "w") as container:
        sound = container.add_stream("aac", rate=16000)
        sound.layout = "mono"
        _write_cover(container, _add_cover(container, attached=True))
        for i in range(8):
            silence = np.zeros((1, 1024), np.float32)
            silence = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
            silence.sample_rate, silence.pts = 16000, i * 1024
            container.mux(sound.encode(silence))
        container.mux(sound.encode())
    with pytest.raises(VideoDecodeError, match="no video stream"):
        open_video(path)


def _without_first_packets(source, path, dropped: int):
    """``source``'s video stream remuxed to ``path`` without its first ``dropped`` packets (in
    decode order), as a clip copied out of a longer video starts."""
    with av.open(str(source)) as original, av.open(str(path), "w") as cut:
        stream = cut.add_stream_from_template(original.streams.video[0])
        for number, packet in enumerate(original.demux(video=0)):
            if number >= dropped and packet.size:
                packet.stream = stream
                cut.mux(packet)
    return path


@pytest.mark.parametrize("dropped", [0, 2])
@pytest.mark.parametrize(
    ("codec", "options"),
    [
        ("libx264", {"g": "6", "bf": "0"}),  # the decoder skips the frames before the keyframe
        ("libvpx-vp9", {"g": "6", "deadline": "realtime", "cpu-used": "8"}),  # it fails on them
        # B-frames shown before the keyframe (an open GOP) need the frame before it too.
        ("mpeg4", {"g": "6", "bf": "2", "qmax": "2"}),
    ],
)
def test_a_video_cut_mid_gop_starts_at_its_first_keyframe(tmp_path, codec, options, dropped):
    # Keyframes at 0, 6, 12, 18: cut before 6, the frames up to it cannot be decoded. The video
    # was called truncated ("frame 0 of 22 could not be decoded"), or its decoding failed.
    source = write_video(tmp_path / "whole.mkv", numbered_frames(24), codec=codec, options=options)
    reader = open_video(_without_first_packets(source, tmp_path / "cut.mkv", dropped))
    first = 6 if dropped else 0
    assert reader.num_frames == 24 - first
    assert frame_numbers(reader.get_frames(range(reader.num_frames))) == list(range(first, 24))
    # From a seek to a later keyframe, and from the start again.
    assert frame_numbers(reader.get_frames([13, 7])) == [first + 13, first + 7]
    assert frame_numbers(reader.get_frames([0])) == [first]


def _one_line_reason(path) -> str:
    with pytest.raises(VideoDecodeError) as info:
        open_video(path)
    reason = info.value.reason
    assert "\n" not in reason and "Errno" not in reason
    return reason


def test_an_empty_file_says_so(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert _one_line_reason(empty) == "cannot read: empty file (0 bytes)"


def test_an_mp4_cut_before_its_index_is_called_incomplete(tmp_path):
    # Written without faststart, its index (moov box) comes after the frames: a download or copy
    # stopped half way has none, and FFmpeg says only "Invalid data found".
    whole = write_video(tmp_path / "whole.mp4", numbered_frames(16)).read_bytes()
    assert whole.index(b"moov") > whole.index(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])
    assert _one_line_reason(cut).startswith("incomplete: an MP4 without its index (moov box)")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    assert _one_line_reason(garbage) == "cannot read: Invalid data found when processing input"
