import numpy as np
import pytest

from dfdc_core.video import VideoReadError, evenly_spaced_indices, read_frames
from tests.helpers import faceless_frames, write_video


def test_evenly_spaced_indices_cover_the_video():
    indices = evenly_spaced_indices(300, 32)
    assert len(indices) == 32 and indices[0] == 0 and indices[-1] == 299
    assert np.all(np.diff(indices) > 0)
    assert evenly_spaced_indices(10, 32).tolist() == list(range(10))
    assert len(evenly_spaced_indices(0, 32)) == 0


@pytest.mark.parametrize("backend", ["pyav", "decord", "opencv"])
@pytest.mark.parametrize("height,width", [(120, 160), (146, 98), (64, 64)])  # landscape, portrait, tiny
def test_backends_decode_the_same_frames(tmp_path, backend, height, width):
    clip = faceless_frames(50, height, width)
    path = write_video(tmp_path / "clip.mp4", clip)
    frames, indices = read_frames(path, 8, (backend,))
    assert frames.shape == (8, height, width, 3) and frames.dtype == np.uint8
    offsets = np.abs(indices - evenly_spaced_indices(50, 8))
    # pyav decodes reference frames only: the nearest one to each evenly spaced frame number
    assert offsets.max() <= (2 if backend == "pyav" else 0)
    # lossy H.264, but each decoded frame is nearer the frame it claims to be than any other frame of the clip
    errors = np.abs(frames[:, None].astype(int) - clip[None].astype(int)).mean(axis=(2, 3, 4))  # (decoded, clip)
    assert errors.argmin(axis=1).tolist() == indices.tolist()
    assert errors[np.arange(8), indices].max() < 7  # codec error 4-5; a neighbouring frame is 8-11 away


@pytest.mark.slow
def test_reference_frames_are_decords_frames(dev_data):
    """PyAV's reference-frame sampling returns bit-identical frames to decord's where the numbers agree,
    never more than one frame away from the evenly spaced numbers on DFDC and FF++ clips."""
    for name in ("abofeumbvv.mp4", "ffc23_yt_519.mp4"):
        frames, indices = read_frames(dev_data / "videos" / name, 32, ("pyav",))
        exact, exact_indices = read_frames(dev_data / "videos" / name, 32, ("decord",))
        assert len(frames) == 32 and np.abs(indices - exact_indices).max() <= 1
        same = indices == exact_indices
        assert 0 < same.sum() < 32  # some sampled frames were non-reference frames, never decoded
        assert np.array_equal(frames[same], exact[same])


@pytest.mark.slow
def test_real_portrait_video_is_rgb_and_upright(dev_data):
    frames, _ = read_frames(dev_data / "videos" / "brtujopkby.mp4", 4)
    assert frames.shape[1:] == (1920, 1080, 3)
    reference, _ = read_frames(dev_data / "videos" / "brtujopkby.mp4", 4, ("opencv",))
    assert np.abs(frames.astype(int) - reference.astype(int)).mean() < 3


@pytest.mark.parametrize("content,message", [(b"", "empty file"), (b"\x00\x01garbage" * 500, "cannot decode")])
def test_bad_files_raise_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoReadError, match=message) as error:
        read_frames(path, 8)
    assert "bad.mp4" in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(VideoReadError, match="no such file"):
        read_frames(tmp_path / "absent.mp4", 8)


def test_truncated_video_without_its_index_is_an_error(tmp_path):
    path = write_video(tmp_path / "clip.mp4", faceless_frames(60))  # moov atom at the end: cut off
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(VideoReadError, match="clip.mp4"):
        read_frames(path, 8)


@pytest.mark.parametrize("backends", [("pyav",), ("decord", "opencv")])
def test_truncated_video_with_its_index_reads_what_is_there(tmp_path, backends):
    clip = faceless_frames(60)
    path = write_video(tmp_path / "clip.mp4", clip, faststart=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VideoReadError):
        read_frames(path, 8, ("decord",))
    frames, indices = read_frames(path, 8, backends)  # decord fails on the missing packets; the others don't
    assert 0 < len(frames) <= 8 and indices[0] == 0 and indices[-1] < 45
    assert np.abs(frames.astype(int) - clip[indices].astype(int)).mean() < 12
