"""Video clips a person can watch, and clips read back from files.

Videos are float arrays `(n, frames, height, width, channels)` in [0, 1],
with 1 (grayscale) or 3 (RGB) channels. They are written as:

- a contact sheet (`save_contact_sheet`): one PNG, one clip per row, its
  frames left to right (`frame_strips` lays each clip out so, for
  TensorBoard images too);
- an animation (`save_gif`, `save_mp4`): frame t is the grid
  (`kgen.media.image_grid`) of every clip's frame t, enlarged so a person
  can see small frames.

GIFs need Pillow alone; MP4 (H.264) needs imageio and imageio-ffmpeg, the
`video` extra (`pip install "kgen[video]"`), imported only when an MP4 is
written or read. Like `kgen.media`, this module imports neither Keras nor
any model code, so `kgen sample` writes an exported model's clips with
`VideoWriter`. Every file is written by `kgen.io.atomic_path` (a temporary
sibling renamed into place), so a failed write leaves the previous file; a
path that cannot be written raises `kgen.media.OutputError` naming it.

`read_clip` reads one GIF or MP4 back as float32 `(frames, h, w, c)`,
refusing (with `kgen.data.DataError` naming the file) what is missing, not
a video, or larger than its bounds.

Example:

```python
from kgen import video

video.save_gif("samples.gif", clips, fps=8)      # clips: (n, 10, 32, 32, 1)
video.save_contact_sheet("samples.png", clips)
clip = video.read_clip("samples.gif")            # (10, H, W, 1)
```
"""

import contextlib
import math
import pathlib

import numpy as np

from kgen import io as kgen_io
from kgen import media
from kgen.family import OutputWriter
from kgen.media import OutputError

# The most frames `read_clip` reads from one clip unless told otherwise.
MAX_CLIP_FRAMES = 1000
# The most pixels one frame of a clip file may hold (a 4096 x 4096 frame);
# a larger frame is refused before it is decoded.
MAX_FRAME_PIXELS = 4096 * 4096
# The most bytes the frames `read_clip` returns may take (float32).
MAX_CLIP_BYTES = 2**31
# Animations are enlarged (nearest neighbour, by a whole factor) to at
# least this width in pixels.
MIN_WIDTH = 256
VIDEO_SUFFIXES = (".gif", ".mp4")
_INSTALL_HINT = 'pip install "kgen[video]" (imageio and imageio-ffmpeg)'


def check_videos(videos):
    """`videos` as float32 `(n, frames, h, w, c)`, c in 1 or 3, finite.

    Raises:
        ValueError: naming the shape, or the non-finite values.
    """
    videos = np.asarray(videos, dtype="float32")
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3) or 0 in videos.shape:
        raise ValueError(
            f"videos must be (n, frames, height, width, channels) with channels 1 or 3 "
            f"and no empty axis; got shape {videos.shape}")
    if not np.isfinite(videos).all():
        raise ValueError("videos hold non-finite values (NaN or inf)")
    return videos


def frame_strips(videos, padding=1):
    """Each clip as one horizontal strip of its frames.

    Args:
        videos: float `(n, frames, h, w, c)` in [0, 1].
        padding: white pixels between two frames.

    Returns:
        float32 `(n, h, frames * w + (frames - 1) * padding, c)`, clipped
        to [0, 1].
    """
    videos = check_videos(videos)
    padding = _whole(padding, "padding", low=0)
    n, frames, h, w, c = videos.shape
    strips = np.ones((n, h, frames * w + (frames - 1) * padding, c), dtype="float32")
    for t in range(frames):
        x = t * (w + padding)
        strips[:, :, x : x + w] = videos[:, t]
    return np.clip(strips, 0.0, 1.0)


def save_contact_sheet(path, videos, columns=None):
    """Write a PNG of `videos`, one clip per row (its frames left to right).

    Args:
        path: the file to write (PNG, whatever its suffix).
        videos: float `(n, frames, h, w, c)` in [0, 1].
        columns: clips side by side in one row (default 1).

    Returns:
        `path` as a `pathlib.Path`.
    """
    from PIL import Image

    grid = media.image_grid(frame_strips(videos), columns=columns or 1)
    grid = _enlarge(grid, _scale(grid.shape[1]))
    path = pathlib.Path(path)
    with _atomic(path) as tmp:
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(tmp, format="PNG")
    return path


def animation_frames(videos, columns=None, padding=1, scale=None):
    """The frames of the animation of `videos`: frame t is the grid
    (`kgen.media.image_grid`) of every clip's frame t.

    Args:
        videos: float `(n, frames, h, w, c)` in [0, 1].
        columns: clips per row of the grid (default: a square grid).
        padding: white pixels around and between the clips.
        scale: whole factor each pixel is enlarged by (nearest); default
            the least that makes the grid at least `MIN_WIDTH` pixels wide.

    Returns:
        uint8 `(frames, H, W, c)`.
    """
    videos = check_videos(videos)
    padding = _whole(padding, "padding", low=0)
    grids = np.stack([media.image_grid(videos[:, t], columns, padding)
                      for t in range(videos.shape[1])])
    scale = _scale(grids.shape[2]) if scale is None else _whole(scale, "scale", low=1)
    return _enlarge(grids, scale, axes=(1, 2))


def save_gif(path, videos, fps=8, columns=None, *, padding=1, scale=None):
    """Write one looping animated GIF of `videos` (`animation_frames`).

    Every frame of the animation is written as one GIF frame, a still one
    included, so the file holds as many frames as the clips. Grayscale
    clips are written exactly (a palette of 256 grays); RGB frames are
    reduced to 256 colours each. GIF stores a frame's delay in hundredths
    of a second, so `fps` is rounded to such a delay.

    Args:
        path: the `.gif` file to write.
        videos: float `(n, frames, h, w, c)` in [0, 1].
        fps: frames per second.
        columns: clips per row (default: a square grid).
        padding: see `animation_frames`.
        scale: see `animation_frames`.

    Returns:
        `path` as a `pathlib.Path`.
    """
    from PIL import GifImagePlugin
    from PIL import Image

    delay = max(2, round(100.0 / _fps(fps)))  # hundredths of a second
    frames = animation_frames(videos, columns, padding, scale)
    gray = bytes(i // 3 for i in range(768))
    pictures = []
    for frame in frames:
        if frame.shape[-1] == 1:
            picture = Image.fromarray(frame[..., 0])
            picture.putpalette(gray)  # mode L -> P, index = gray level
        else:
            picture = Image.fromarray(frame).quantize(256, dither=Image.Dither.NONE)
        pictures.append(picture)
    # Pillow's `save_all` merges a frame equal to the one before it into
    # that frame's delay; a clip keeps every frame when each is written
    # through Pillow's GIF frame encoder (`getheader` / `getdata`).
    path = pathlib.Path(path)
    with _atomic(path) as tmp:
        with open(tmp, "wb") as f:
            header, _ = GifImagePlugin.getheader(pictures[0].copy(), None, {"loop": 0})
            f.writelines(header)
            for picture in pictures:
                f.writelines(GifImagePlugin.getdata(
                    picture, duration=delay * 10, include_color_table=True))
            f.write(b";")
    return path


def save_mp4(path, videos, fps=8, columns=None, *, padding=1, scale=None):
    """Write the animation of `videos` (`animation_frames`) as H.264 MP4.

    Needs imageio and imageio-ffmpeg (`pip install "kgen[video]"`). The
    frames are padded with white to an even width and height (H.264 in
    yuv420p needs both even), and compressed lossily.

    Args:
        path: the `.mp4` file to write.
        videos: float `(n, frames, h, w, c)` in [0, 1].
        fps: frames per second.
        columns: clips per row (default: a square grid).
        padding: see `animation_frames`.
        scale: see `animation_frames`.

    Returns:
        `path` as a `pathlib.Path`.

    Raises:
        OutputError: naming the path when imageio or imageio-ffmpeg is
            missing, or ffmpeg cannot write it.
    """
    path = pathlib.Path(path)
    ffmpeg = _ffmpeg(path, OutputError)
    fps = _fps(fps)
    frames = animation_frames(videos, columns, padding, scale)
    _, h, w, c = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
    h, w = h + h % 2, w + w % 2
    with _atomic(path, suffix=".mp4") as tmp:
        try:
            writer = ffmpeg.write_frames(
                str(tmp), (w, h), pix_fmt_in="gray" if c == 1 else "rgb24",
                pix_fmt_out="yuv420p", fps=fps, quality=8, codec="libx264",
                macro_block_size=1, ffmpeg_log_level="error")
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
            writer.close()
        except (OSError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OutputError(f"{path}: ffmpeg cannot write the MP4 ({reason})") from None
    return path


def read_clip(path, frames=None, size=None, max_frames=MAX_CLIP_FRAMES, channels=1):
    """Read one GIF or MP4 clip as float32 `(frames, h, w, channels)` in [0, 1].

    GIFs are read with Pillow, MP4s with imageio-ffmpeg (`pip install
    "kgen[video]"`), one frame at a time: a frame over `MAX_FRAME_PIXELS`
    is refused before it is decoded, and reading stops at the frames asked
    for.

    Args:
        path: a `.gif` or `.mp4` file.
        frames: keep the first `frames` frames (the rest are not read); a
            shorter clip is refused. Default: all, at most `max_frames`.
        size: `(height, width)` (or one int for both) to resize each frame
            to (bilinear, antialiased); default: as stored.
        max_frames: the most frames a clip may hold when `frames` is not
            given (a longer clip is refused).
        channels: 1 for grayscale (ITU-R 601 luma), 3 for RGB.

    Returns:
        float32 `(frames, h, w, channels)`.

    Raises:
        kgen.data.DataError: naming the file when it is missing, not a
            readable GIF or MP4, shorter than `frames`, longer than
            `max_frames`, or over the frame and size bounds.
    """
    from kgen.data.errors import DataError

    path = pathlib.Path(path)
    limit = _whole(max_frames, "max_frames", low=1, error=DataError)
    if frames is not None:
        frames = _whole(frames, "frames", low=1, error=DataError)
        limit = frames
    if size is not None:
        size = _size(size, DataError)
    if channels not in (1, 3):
        raise DataError(f"channels={channels!r}: must be 1 (grayscale) or 3 (RGB)")
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise DataError(f"{path}: cannot read clips from {suffix or 'a file without a suffix'!r} "
                        f"files (expected one of {', '.join(VIDEO_SUFFIXES)})")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: expected a clip file, found a directory")
    read = _gif_frames if suffix == ".gif" else _mp4_frames
    clip = _Clip(path, size, channels, DataError)
    for image in read(path, channels, DataError):
        if clip.count == limit:
            if frames is None:
                raise DataError(f"{path}: the clip holds more than max_frames={limit} frames "
                                f"(pass frames=K to read its first K, or a larger max_frames)")
            break
        clip.add(image)
    if not clip.count:
        raise DataError(f"{path}: the clip holds no frames")
    if frames is not None and clip.count < frames:
        raise DataError(f"{path}: the clip holds {clip.count} frames, fewer than "
                        f"frames={frames}")
    return clip.array()


class _Clip:
    """Frames gathered one at a time, resized, within `MAX_CLIP_BYTES`."""

    def __init__(self, path, size, channels, error):
        self.path, self.size, self.channels, self.error = path, size, channels, error
        self.frames = []

    @property
    def count(self):
        return len(self.frames)

    def add(self, image):
        from PIL import Image

        if self.size is not None and image.size != (self.size[1], self.size[0]):
            image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
        frame = np.asarray(image, dtype="uint8").reshape(image.height, image.width, -1)
        if (self.count + 1) * frame.size * 4 > MAX_CLIP_BYTES:
            raise self.error(f"{self.path}: {self.count + 1} frames of {image.height}x"
                             f"{image.width} would take over {MAX_CLIP_BYTES:,} bytes "
                             f"(pass frames=K or a smaller size)")
        self.frames.append(frame)

    def array(self):
        return np.stack(self.frames).astype("float32") / 255.0


def _gif_frames(path, channels, error):
    """The GIF's frames as Pillow images (mode L or RGB), one at a time."""
    from PIL import Image
    from PIL import ImageSequence

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as picture:
            if picture.format != "GIF":
                raise error(f"{path}: not a GIF (the file holds {picture.format} data)")
            _check_pixels(path, picture.size, error)
            for frame in ImageSequence.Iterator(picture):
                # RGB first: a palette frame's gray is its colour's luma.
                yield frame.convert("RGB").convert(mode)
    except (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, error):
            raise
        raise error(f"{path}: not a readable GIF ({_reason(e)})") from None


def _mp4_frames(path, channels, error):
    """The MP4's frames as Pillow images (mode L or RGB), one at a time."""
    from PIL import Image

    ffmpeg = _ffmpeg(path, error)
    try:
        reader = ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as e:
        raise error(f"{path}: not a readable MP4 ({_reason(e)})") from None
    try:
        width, height = meta["size"]
        _check_pixels(path, (width, height), error)
        while True:
            try:
                data = next(reader)
            except StopIteration:
                return
            except (OSError, RuntimeError) as e:
                raise error(f"{path}: not a readable MP4 ({_reason(e)})") from None
            rgb = np.frombuffer(data, dtype="uint8").reshape(height, width, 3)
            image = Image.fromarray(rgb)
            yield image if channels == 3 else image.convert("L")
    finally:
        reader.close()


def _check_pixels(path, size, error):
    width, height = size
    if width * height > MAX_FRAME_PIXELS:
        raise error(f"{path}: frames of {width}x{height} pixels, over the limit of "
                    f"{MAX_FRAME_PIXELS:,} pixels per frame")


def _reason(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _ffmpeg(path, error):
    """`imageio_ffmpeg`, or `error` naming `path` and how to install it."""
    try:
        import imageio  # noqa: F401  (the `video` extra installs both)
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise error(f"{path}: MP4 clips need imageio and imageio-ffmpeg "
                    f"({_reason(e)}): {_INSTALL_HINT}") from None
    return imageio_ffmpeg


class VideoWriter(OutputWriter):
    """How `kgen sample` writes video rows: an animation and its contact sheet.

    `--out NAME.gif` (the default, `samples.gif`) or `NAME.mp4` writes the
    animation of every clip (`save_gif`, `save_mp4`) and, beside it,
    `NAME.png`, the contact sheet (`save_contact_sheet`); `--out NAME.png`
    writes the contact sheet alone.
    """

    kind = "video"
    default_out = "samples.gif"
    suffixes = (".gif", ".mp4", ".png")
    fps = 8

    def check_path(self, out):
        path = pathlib.Path(self.default_out if out is None else out)
        suffix = path.suffix.lower()
        if suffix not in self.suffixes:
            raise OutputError(
                f"{path}: cannot write video as {suffix or 'a file without a suffix'!r} "
                f"(use one of {', '.join(self.suffixes)})")
        if suffix == ".mp4":
            _ffmpeg(path, OutputError)
        media.check_writable(path)
        if suffix != ".png":
            media.check_writable(path.with_suffix(".png"))
        return path

    def write(self, out, values, inputs, columns=None):
        path = pathlib.Path(out)
        suffix = path.suffix.lower()
        if suffix == ".png":
            return save_contact_sheet(path, values)
        save = save_gif if suffix == ".gif" else save_mp4
        save(path, values, fps=self.fps, columns=columns)
        save_contact_sheet(path.with_suffix(".png"), values)
        return path


VIDEO_WRITER = VideoWriter()


@contextlib.contextmanager
def _atomic(path, suffix=None):
    """`kgen.io.atomic_path`, with a failed write raised as `OutputError`."""
    try:
        with kgen_io.atomic_path(path, suffix) as tmp:
            yield tmp
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None


def _scale(width):
    """The least whole factor that makes `width` at least `MIN_WIDTH`."""
    return max(1, math.ceil(MIN_WIDTH / width))


def _enlarge(image, scale, axes=(0, 1)):
    for axis in axes:
        image = np.repeat(image, scale, axis=axis)
    return image


def _whole(value, name, low, error=ValueError):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise error(f"{name}={value!r}: must be an integer >= {low}")
    return int(value)


def _size(size, error):
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2:
        raise error(f"size={size!r}: expected (height, width) or one integer")
    return tuple(_whole(v, "size", low=1, error=error) for v in pair)


def _fps(fps):
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(fps) or not 0 < fps <= 100:
        raise ValueError(f"fps={fps!r}: must be a number in (0, 100]")
    return float(fps)
