"""Decoding: exact frame counts, the right frames, seeking, bad files, backend parity."""

import av
import numpy as np
import pytest
from videos import frame_numbers, moving_square_frames, numbered_frames, write_video

from timematters.data.video import (
    DecoderUnavailable,
    PyAVReader,
    VideoDecodeError,
    open_video,
    torchcodec_available,
)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videos")
    frames = numbered_frames(30)
    return {ext: write_video(tmp / f"numbered{ext}", frames) for ext in (".webm", ".mp4")}


@pytest.mark.parametrize("ext", [".webm", ".mp4"])
def test_exact_frame_count(videos, ext):
    if ext == ".webm":  # WebM declares no frame count: the reader must count
        with av.open(str(videos[ext])) as container:
            assert container.streams.video[0].frames == 0
    assert open_video(videos[ext]).num_frames == 30


@pytest.mark.parametrize("ext", [".webm", ".mp4"])
def test_frames_at_indices(videos, ext):
    reader = open_video(videos[ext])
    indices = [29, 0, 13, 13, 7, 22]  # any order, repeats allowed
    frames = reader.get_frames(indices)
    assert frames.dtype == np.uint8 and frames.shape == (6, 48, 64, 3)
    assert frame_numbers(frames) == indices


def test_seek_matches_sequential_decoding(tmp_path):
    # A textured clip with keyframes every 5 frames and B-frames: late frames come from a seek.
    path = write_video(tmp_path / "moving.mp4", moving_square_frames(24, step=(1, 1)))
    reader = PyAVReader(path)
    assert len(reader._keyframes) > 2
    with av.open(str(path)) as container:
        every = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    indices = [17, 21, 23]
    np.testing.assert_array_equal(reader.get_frames(indices), every[indices])


@pytest.mark.parametrize(
    ("codec", "options"),
    [("libx264", {"bf": "3", "g": "8"}), ("mpeg4", {"bf": "2", "g": "8", "qmax": "2"})],
)
def test_b_frames_in_avi_give_the_frames_asked_for(tmp_path, codec, options):
    # AVI stores no presentation times: for H.264 the container makes them up in decode order,
    # and frames matched by them came back out of place (frame 7 for 5, 19 for 20).
    path = write_video(tmp_path / f"{codec}.avi", numbered_frames(33), codec=codec, options=options)
    reader = open_video(path)
    for index in range(33):
        assert frame_numbers(reader.get_frames([index])) == [index]
    assert frame_numbers(reader.get_frames([31, 2, 20, 21])) == [31, 2, 20, 21]


def test_out_of_range_indices(videos):
    with pytest.raises(IndexError):
        open_video(videos[".webm"]).get_frames([30])


@pytest.mark.parametrize("ext", [".webm", ".mp4"])
def test_truncated_files_are_bad(videos, tmp_path, ext):
    data = videos[ext].read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError) as info:
        open_video(cut).get_frames([0, 29])
    assert str(cut) in str(info.value)


def _matroska_with_sound(path, frames, *, first_pts_ms: int = 0):
    """H.264 + AAC in Matroska, 12 fps, its first frame at ``first_pts_ms`` (a clip cut from a
    longer stream starts late)."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=12, options={"g": "6"})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=16000)
        sound.layout = "mono"
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = first_pts_ms + i * 83, Fraction(1, 1000)
            container.mux(video.encode(frame))
            silence = np.zeros((1, 1333), np.float32)
            samples = av.AudioFrame.from_ndarray(silence, format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, i * 1333
            container.mux(sound.encode(samples))
        container.mux(video.encode())
        container.mux(sound.encode())
    return path


def test_a_cut_off_file_with_sound_is_bad_and_one_that_starts_late_is_not(tmp_path):
    # Matroska declares no per-stream duration: with a sound track the cut went unnoticed and
    # 31 of 40 frames were read as the whole video.
    whole = _matroska_with_sound(tmp_path / "whole.mkv", numbered_frames(30))
    assert open_video(whole).num_frames == 30
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.8)])
    with pytest.raises(VideoDecodeError, match="truncated: its data ends at"):
        open_video(cut)
    # Intact, but its first frame at 5 s: it used to be called cut off.
    late = _matroska_with_sound(tmp_path / "late.mkv", numbered_frames(30), first_pts_ms=5000)
    assert frame_numbers(open_video(late).get_frames([0, 29, 15])) == [0, 29, 15]


def test_garbage_and_missing_files_are_bad(tmp_path):
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    for path in (garbage, tmp_path / "absent.mp4"):
        with pytest.raises(VideoDecodeError, match="cannot read"):
            open_video(path)


def test_unknown_backend(videos):
    with pytest.raises(ValueError, match="pyav, torchcodec, frames"):
        open_video(videos[".mp4"], "decord")


@pytest.mark.skipif(torchcodec_available(), reason="torchcodec loads here")
def test_torchcodec_unavailable_is_explained(videos):
    with pytest.raises(DecoderUnavailable, match="data.decoder=pyav"):
        open_video(videos[".mp4"], "torchcodec")


@pytest.mark.skipif(not torchcodec_available(), reason="torchcodec cannot load here")
@pytest.mark.parametrize("ext", [".webm", ".mp4"])
def test_torchcodec_gives_pyav_pixels(tmp_path, ext):
    path = write_video(tmp_path / f"moving{ext}", moving_square_frames(20))
    pyav, codec = open_video(path, "pyav"), open_video(path, "torchcodec")
    assert codec.num_frames == pyav.num_frames == 20
    indices = [0, 5, 11, 19]
    a = pyav.get_frames(indices).astype(int)
    b = codec.get_frames(indices).astype(int)
    assert a.shape == b.shape
    # Same decoded pictures; YUV -> RGB conversions may round differently.
    assert np.abs(a - b).mean() < 1.0 and np.abs(a - b).max() <= 8


def test_a_video_stored_turned_comes_upright(tmp_path):
    # A phone's portrait video: stored landscape, with a rotation for players to apply. It was
    # read sideways (the test crops across the wrong side, flow directions turned).
    frames = numbered_frames(6, height=32, width=48)
    frames[:, :8, :, 0] = 255  # a red band along the top of the stored image
    path = tmp_path / "turned.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.set_display_rotation(90)  # counterclockwise
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    got = open_video(path).get_frames([0, 5])
    assert got.shape == (2, 48, 32, 3)  # portrait
    assert got[:, :, :8, 0].mean() > 200 and got[:, :, -8:, 0].mean() < 150  # the band: left
    assert frame_numbers(got[:, :, 8:]) == [0, 5]  # (beside the band)


@pytest.mark.parametrize("turn", [0, 90, 180, -90])
@pytest.mark.parametrize(
    "hflip, vflip", [(False, False), (True, False), (False, True), (True, True)]
)
def test_a_mirrored_and_turned_video_comes_out_as_players_show_it(tmp_path, turn, hflip, vflip):
    # FFmpeg's display matrix: turned counterclockwise, then flipped. A mirror alone (a selfie
    # camera's) came out turned by 180 degrees instead: the matrix's angle reads -180.
    blocks = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((8, 8, 1), np.uint8))  # 8-pixel blocks: no codec blur across
    path = tmp_path / "mirrored.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=12, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv444p"
        stream.set_display_rotation(turn, hflip=hflip, vflip=vflip)
        for _ in range(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    expected = np.rot90(image, k=turn // 90)[:, :: -1 if hflip else 1][:: -1 if vflip else 1]
    got = open_video(path).get_frames([0])[0]
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).mean() < 3
