import numpy as np
import pytest

from kgen import media

pytestmark = pytest.mark.backend_agnostic


def test_image_grid_tiles_with_padding():
    images = np.stack([np.full((4, 5, 1), i / 5) for i in range(5)])
    grid = media.image_grid(images, columns=3, padding=1)
    assert grid.shape == (2 * 5 + 1, 3 * 6 + 1, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 7, 0] == round(0.2 * 255)
    assert grid[0, 0, 0] == 255  # padding is white


def test_png_grid_is_enlarged_for_small_images(tmp_path):
    from PIL import Image

    path = media.save_image_grid(tmp_path / "g.png", np.zeros((4, 8, 8, 1)))
    with Image.open(path) as picture:
        assert picture.size[0] >= 128



def test_wav_is_16_bit_pcm_at_the_rate_and_written_atomically(tmp_path):
    import wave

    import pytest

    clip = np.sin(np.linspace(0, 200 * np.pi, 8000)).astype("float32")
    clip[:3] = [1.5, -2.0, 0.5]  # out of range: clipped to full scale
    path = media.save_wav(tmp_path / "a" / "x.wav", clip, 8000)
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) \
            == (1, 2, 8000, 8000)
        pcm = np.frombuffer(f.readframes(8000), "<i2")
    assert pcm[:3].tolist() == [32767, -32767, 16384]
    np.testing.assert_allclose(pcm[3:] / 32767.0, clip[3:], atol=1 / 32767)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="non-finite"):
        media.save_wav(path, np.full(8000, np.nan), 8000)
    with pytest.raises(ValueError, match="sample_rate=0"):
        media.save_wav(path, clip, 0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.wav"]


def test_a_failed_write_is_named_and_leaves_the_previous_file(tmp_path, monkeypatch):
    import pytest

    from kgen import io as kgen_io

    path = media.save_text(tmp_path / "out.txt", "first")

    def disk_full(tmp, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kgen_io, "move_into_place", disk_full)
    with pytest.raises(media.OutputError,
                       match=rf"^{path}: cannot write \(No space left on device\)$"):
        media.save_text(path, "second")
    assert path.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_files_are_written_by_kgen_io_with_its_temporary_names(tmp_path, monkeypatch):
    """Media writes go through kgen's one atomic writer: its temporaries
    carry the writer's process id, which `clean_stale_temporaries` reads."""
    import os

    from kgen import io as kgen_io

    renamed = []
    original = kgen_io.move_into_place

    def move_into_place(tmp, path, *args, **kwargs):
        renamed.append((tmp.name, path.name))
        return original(tmp, path, *args, **kwargs)

    monkeypatch.setattr(kgen_io, "move_into_place", move_into_place)
    media.save_array(tmp_path / "x.npy", np.zeros(3))
    media.save_wav(tmp_path / "x.wav", np.zeros(80), 8000)
    media.save_image_grid(tmp_path / "x.png", np.zeros((1, 4, 4, 1)))
    assert [path for _, path in renamed] == ["x.npy", "x.wav", "x.png"]
    assert all(tmp.startswith(f"{path}.tmp-{os.getpid()}-") for tmp, path in renamed)
