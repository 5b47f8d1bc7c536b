import numpy as np
import pytest

from kgen import video
from kgen.data import DataError
from kgen.media import OutputError

pytestmark = pytest.mark.backend_agnostic


def clips(n=2, frames=5, h=12, w=10, c=1, seed=0):
    """Clips with something moving in every frame: a bright square crossing
    a dim gradient."""
    rng = np.random.default_rng(seed)
    videos = np.zeros((n, frames, h, w, c), dtype="float32")
    videos += np.linspace(0.0, 0.4, w, dtype="float32")[None, None, None, :, None]
    for i in range(n):
        colour = rng.uniform(0.6, 1.0, c)
        for t in range(frames):
            y, x = (t + i) % (h - 3), (2 * t + i) % (w - 3)
            videos[i, t, y : y + 3, x : x + 3] = colour
    return videos


def unscaled(frames, h, w, padding=1):
    """The one clip of a grid of one, from frames enlarged by a whole factor."""
    scale = frames.shape[2] // (w + 2 * padding)
    start = padding * scale
    return frames[:, start : start + h * scale : scale, start : start + w * scale : scale]


def as_written(videos):
    """Pixels as image grids write them: floor(x * 255 + 0.5) / 255."""
    return np.floor(np.clip(videos, 0, 1) * 255 + 0.5) / 255


def test_frame_strips_lay_each_clip_out_left_to_right():
    videos = clips(n=3, frames=4, h=6, w=5)
    strips = video.frame_strips(videos, padding=2)
    assert strips.shape == (3, 6, 4 * 5 + 3 * 2, 1) and strips.dtype == np.float32
    for t in range(4):
        np.testing.assert_array_equal(strips[:, :, t * 7 : t * 7 + 5], videos[:, t])
    assert (strips[:, :, 5:7] == 1.0).all()  # white between frames
    assert video.frame_strips(videos, padding=0).shape == (3, 6, 20, 1)


def test_contact_sheet_is_one_clip_per_row(tmp_path):
    from PIL import Image

    videos = clips(n=3, frames=10, h=32, w=32)
    path = video.save_contact_sheet(tmp_path / "sheet.png", videos)
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.mode == "L"
        assert sheet.size == (10 * 33 + 1, 3 * 33 + 1)
        pixels = np.asarray(sheet) / 255.0
    np.testing.assert_allclose(pixels[1:33, 1 + 33 * 4 : 33 * 5, None],
                               as_written(videos[0, 4]), atol=1e-6)
    small = video.save_contact_sheet(tmp_path / "small.png", clips(n=2, frames=3, h=4, w=4))
    with Image.open(small) as sheet:
        assert sheet.size[0] >= 256  # tiny frames are enlarged to be seen


def test_gif_holds_every_frame_of_the_grid_and_loops(tmp_path):
    from PIL import Image

    videos = clips(n=5, frames=6, h=8, w=8)
    videos[:, 3] = videos[:, 2]  # a still frame is kept, not merged
    path = video.save_gif(tmp_path / "a" / "x.gif", videos, fps=10, columns=3)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.info["loop"] == 0 and gif.info["duration"] == 100
        assert gif.size[0] >= 256
    frames = video.read_clip(path)
    expected = video.animation_frames(videos, columns=3).astype("float32") / 255.0
    np.testing.assert_array_equal(frames, expected)  # grayscale GIFs are exact
    assert not list(path.parent.glob("*.tmp-*"))


def test_gif_round_trip_gives_one_clips_frames_back(tmp_path):
    videos = clips(n=1, frames=7, h=12, w=10)
    frames = video.read_clip(video.save_gif(tmp_path / "one.gif", videos))
    np.testing.assert_allclose(unscaled(frames, 12, 10), as_written(videos[0]), atol=1e-6)
    exact = video.read_clip(video.save_gif(tmp_path / "bare.gif", videos, padding=0, scale=1))
    np.testing.assert_allclose(exact, as_written(videos[0]), atol=1e-6)


def test_rgb_gif_round_trip_is_within_its_palette(tmp_path):
    videos = clips(n=1, frames=4, h=12, w=10, c=3)
    path = video.save_gif(tmp_path / "rgb.gif", videos, padding=0, scale=1)
    frames = video.read_clip(path, channels=3)
    assert frames.shape == (4, 12, 10, 3)
    assert np.abs(frames - videos[0]).max() < 0.05
    gray = video.read_clip(path)
    assert gray.shape == (4, 12, 10, 1)


def test_mp4_round_trip_is_close(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason='needs the video extra: pip install "kgen[video]"')
    videos = clips(n=1, frames=8, h=32, w=32)
    path = video.save_mp4(tmp_path / "one.mp4", videos, fps=8)
    assert path.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    frames = video.read_clip(path)
    assert frames.shape[0] == 8 and frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
    back = unscaled(frames, 32, 32)
    assert np.abs(back - videos[0]).mean() < 0.02  # H.264 is lossy
    grid = video.read_clip(video.save_mp4(tmp_path / "grid.mp4", clips(n=3, c=3), fps=4),
                           channels=3, size=(40, 60))
    assert grid.shape == (5, 40, 60, 3)


def test_read_clip_keeps_and_resizes_frames(tmp_path):
    path = video.save_gif(tmp_path / "c.gif", clips(n=1, frames=6), padding=0, scale=1)
    assert video.read_clip(path, frames=4).shape == (4, 12, 10, 1)
    resized = video.read_clip(path, size=(6, 5))
    assert resized.shape == (6, 6, 5, 1) and resized.dtype == np.float32
    assert 0.0 <= resized.min() and resized.max() <= 1.0
    assert video.read_clip(path, size=8, channels=3).shape == (6, 8, 8, 3)


def test_read_clip_refuses_what_is_not_a_clip_it_can_read(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="missing.gif: no such file"):
        video.read_clip(tmp_path / "missing.gif")
    text = tmp_path / "notes.gif"
    text.write_text("not a picture\n")
    with pytest.raises(DataError, match="notes.gif: not a readable GIF"):
        video.read_clip(text)
    (tmp_path / "notes.mp4").write_text("not a video\n")
    with pytest.raises(DataError, match="notes.mp4: not a readable MP4"):
        video.read_clip(tmp_path / "notes.mp4")
    with pytest.raises(DataError, match="'.txt'"):
        video.read_clip(tmp_path / "clip.txt")
    path = video.save_gif(tmp_path / "long.gif", clips(n=1, frames=6), padding=0, scale=1)
    with pytest.raises(DataError, match="long.gif: the clip holds more than max_frames=3"):
        video.read_clip(path, max_frames=3)
    with pytest.raises(DataError, match="long.gif: the clip holds 6 frames, fewer than frames=9"):
        video.read_clip(path, frames=9)
    with pytest.raises(DataError, match="frames=0"):
        video.read_clip(path, frames=0)
    monkeypatch.setattr(video, "MAX_FRAME_PIXELS", 100)
    with pytest.raises(DataError, match="long.gif: frames of 10x12 pixels, over the limit"):
        video.read_clip(path)


def test_bad_videos_are_refused_by_shape(tmp_path):
    with pytest.raises(ValueError, match=r"\(4, 8, 8, 1\)"):
        video.save_gif(tmp_path / "x.gif", np.zeros((4, 8, 8, 1)))
    with pytest.raises(ValueError, match="channels 1 or 3"):
        video.frame_strips(np.zeros((1, 2, 8, 8, 2)))
    with pytest.raises(ValueError, match="fps=0"):
        video.save_gif(tmp_path / "x.gif", clips(), fps=0)
    assert not (tmp_path / "x.gif").exists()


def test_writer_writes_the_animation_and_its_contact_sheet(tmp_path):
    writer = video.VIDEO_WRITER
    assert isinstance(writer, video.VideoWriter) and writer.kind == "video"
    assert str(writer.check_path(None)) == "samples.gif"
    videos = clips(n=4)
    out = writer.check_path(tmp_path / "s.gif")
    assert writer.write(out, videos, {"seed": np.arange(4)}) == out
    assert video.read_clip(out).shape[0] == 5
    assert (tmp_path / "s.png").is_file()
    sheet = writer.check_path(tmp_path / "only.png")
    assert writer.write(sheet, videos, {}) == sheet and sheet.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.png", "s.gif", "s.png"]


def test_writer_writes_mp4(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason='needs the video extra: pip install "kgen[video]"')
    out = video.VIDEO_WRITER.check_path(tmp_path / "s.mp4")
    assert video.VIDEO_WRITER.write(out, clips(n=2), {}, columns=2) == out
    assert out.is_file() and (tmp_path / "s.png").is_file()


def test_writer_refuses_other_suffixes_and_unwritable_paths(tmp_path):
    with pytest.raises(OutputError, match=r"s\.txt: cannot write video as '\.txt' "
                                          r"\(use one of \.gif, \.mp4, \.png\)"):
        video.VIDEO_WRITER.check_path(tmp_path / "s.txt")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        video.VIDEO_WRITER.check_path(tmp_path / "file" / "s.gif")
    (tmp_path / "s.png").mkdir()
    with pytest.raises(OutputError, match="s.png: is a directory"):
        video.VIDEO_WRITER.check_path(tmp_path / "s.gif")


def test_mp4_without_the_video_extra_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    hint = r'pip install "kgen\[video\]"'
    with pytest.raises(OutputError, match=f"s.mp4: MP4 clips need .*{hint}"):
        video.VIDEO_WRITER.check_path(tmp_path / "s.mp4")
    with pytest.raises(OutputError, match=hint):
        video.save_mp4(tmp_path / "s.mp4", clips())
    (tmp_path / "c.mp4").write_bytes(b"")
    with pytest.raises(DataError, match=f"c.mp4: MP4 clips need .*{hint}"):
        video.read_clip(tmp_path / "c.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4"]
