"""Video in and out with PyAV: probing, picture-area (letterbox) detection, decoding straight to the
prefiltered plate, frame-rate resampling, and lossless writers that only ever publish whole files."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from ..jobs.errors import Equi360Error
from .audio import AudioEncoder
from .container import duration_s, frame_time, open_video, seek, stream_origin

# Lossless codecs for the reference: H.264 in its lossless RGB mode (qp 0) is ~3x faster to encode
# than FFV1 and far smaller, and decodes bit-exactly; FFV1 is there for archival pipelines.
LOSSLESS_CODECS = {"h264rgb": ("libx264rgb", {"qp": "0", "preset": "ultrafast"}),
                   "ffv1": ("ffv1", {"level": "3", "slices": "4"})}
DEFAULT_LOSSLESS_CODEC = "h264rgb"

# swscale's "bilinear" is, when downscaling, a tent filter as wide as the scale ratio: an area-style
# prefilter that leaves ~5x less moiré than its "area" mode on fine stripes at the same cost.
PREFILTER = "bilinear"
_AVCOL_SPC_UNSPECIFIED = 2
_AVCOL_RANGE_JPEG = 2  # full range
_BAR_LEVEL = 24  # a bar row/column never gets brighter than this (8-bit luma, full range)


@dataclass(frozen=True)
class SourceInfo:
    path: Path
    width: int        # the picture as it is shown (after the display matrix), not as it is stored
    height: int
    fps: Fraction
    duration_s: float
    frame_count: int  # as the container states it, or estimated from the duration
    codec: str
    orientation: tuple[str, ...] = ()  # the filters that show the stored picture upright (ORIENTATIONS)


# The eight ways a display matrix turns or mirrors the stored picture (what every phone writes for a clip
# shot in portrait), keyed by the signs of its 2×2 part (a, b, c, d): the FFmpeg filters that show the
# picture as FFmpeg's own player does (checked against it in tests/test_video_input.py).
ORIENTATIONS = {
    (1, 0, 0, 1): (),
    (-1, 0, 0, 1): ("hflip",),
    (1, 0, 0, -1): ("vflip",),
    (-1, 0, 0, -1): ("hflip", "vflip"),
    (0, -1, 1, 0): ("transpose=cclock",),
    (0, 1, -1, 0): ("transpose=clock",),
    (0, 1, 1, 0): ("transpose=cclock_flip",),
    (0, -1, -1, 0): ("transpose=clock_flip",),
}
_ORIENTATION_WORDS = {(): "as stored", ("hflip",): "mirrored left to right", ("vflip",): "mirrored top to bottom",
                      ("hflip", "vflip"): "turned 180°", ("transpose=cclock",): "turned 90° counter-clockwise",
                      ("transpose=clock",): "turned 90° clockwise",
                      ("transpose=cclock_flip",): "turned 90° counter-clockwise and mirrored",
                      ("transpose=clock_flip",): "turned 90° clockwise and mirrored"}
_ORIENT_ARRAY = {"hflip": lambda a: a[:, ::-1], "vflip": lambda a: a[::-1],
                 "transpose=cclock": lambda a: np.rot90(a, 1), "transpose=clock": lambda a: np.rot90(a, -1),
                 "transpose=cclock_flip": lambda a: a.swapaxes(0, 1),
                 "transpose=clock_flip": lambda a: np.rot90(a, 2).swapaxes(0, 1)}


def frame_orientation(frame, path: Path) -> tuple[str, ...]:
    """The filters that show a decoded frame upright, from its display matrix; a turn that is not a
    multiple of 90° is refused."""
    matrix = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if matrix is None:
        return ()
    a, b, _, c, d, *_ = struct.unpack("<9i", bytes(matrix))
    key = tuple(int(np.sign(round(v / 65536))) for v in (a, b, c, d))
    if key not in ORIENTATIONS:
        raise Equi360Error(f"{path}: its display matrix turns the picture by {frame.rotation}°, not a multiple of "
                           "90°: export the clip upright and try again")
    return ORIENTATIONS[key]


def describe_orientation(orientation: tuple[str, ...]) -> str:
    return _ORIENTATION_WORDS[tuple(orientation)]


def orient(image: np.ndarray, orientation: tuple[str, ...]) -> np.ndarray:
    """A decoded (stored) image turned as ``orientation`` shows it."""
    for name in orientation:
        image = _ORIENT_ARRAY[name](image)
    return np.ascontiguousarray(image)


def _orientation_filters(orientation: tuple[str, ...]) -> list[tuple[str, str]]:
    return [tuple(name.split("=")) if "=" in name else (name, "") for name in orientation]


@dataclass(frozen=True)
class PictureBox:
    """The active picture inside the frame: letterbox/pillarbox bars excluded."""
    x: int
    y: int
    width: int
    height: int


def probe(path) -> SourceInfo:
    """What the clip is; refuses files that are missing, not video, or hold no decodable frame."""
    path = Path(path)
    if path.is_dir():
        raise Equi360Error(f"{path}: is a folder, not a video file")
    container, stream = open_video(path)
    with container:
        try:
            first = next(container.decode(stream), None)
        except av.error.EOFError:
            first = None
        except av.error.FFmpegError as err:
            raise Equi360Error(f"{path}: the video stream cannot be decoded ({err.strerror or err})") from None
        if first is None:
            raise Equi360Error(f"{path}: the video has no frames")
        fps = stream.average_rate or stream.guessed_rate or Fraction(24)
        duration = duration_s(container, stream)
        frames = stream.frames or max(1, round(duration * float(fps)))
        orientation = frame_orientation(first, path)
        width, height = (first.height, first.width) if any(o.startswith("transpose") for o in orientation) \
            else (first.width, first.height)
        return SourceInfo(path, width, height, Fraction(fps), duration, frames, stream.codec_context.name, orientation)


FADE_SAMPLES = 4      # frames sampled from the start of the used span, a quarter second apart
FADE_SAMPLE_STEP_S = 0.25


def detect_picture(info: SourceInfo, start_s: float = 0.0, span_s: float | None = None) -> PictureBox:
    """Find letterbox/pillarbox bars over several frames of the used span: every keyframe in it (cheap
    to decode alone) plus frames from its first second, so a fade from black can't make a single dark
    frame decide."""
    container, stream = open_video(info.path)
    origin = stream_origin(stream)
    end_s = math.inf if span_s is None else start_s + span_s
    samples: list[np.ndarray] = []
    with container:
        stream.codec_context.skip_frame = "NONKEY"
        seek(container, stream, start_s)
        for i, frame in enumerate(_decodable(container, stream)):
            t = frame_time(frame, stream, origin, i, info.fps)
            if t > end_s:
                break
            if t >= start_s - 1e-3:
                samples.append(orient(frame.to_ndarray(format="gray"), info.orientation))
        stream.codec_context.skip_frame = "DEFAULT"
        seek(container, stream, start_s)
        next_sample_s = start_s
        for i, frame in enumerate(_decodable(container, stream)):
            t = frame_time(frame, stream, origin, i, info.fps)
            if t > end_s or next_sample_s > start_s + (FADE_SAMPLES - 0.5) * FADE_SAMPLE_STEP_S:
                break
            if t >= next_sample_s - 0.5 / float(info.fps):
                samples.append(orient(frame.to_ndarray(format="gray"), info.orientation))
                next_sample_s += FADE_SAMPLE_STEP_S
    return picture_box_from_samples(samples, info.width, info.height)


def _decodable(container, stream):
    """The frames that decode: a file cut short (an interrupted copy) or damaged further on ends where its
    data does, as when it is decoded for the plate."""
    try:
        yield from container.decode(stream)
    except (av.error.InvalidDataError, av.error.EOFError):
        return


def picture_box_from_samples(samples: list[np.ndarray], width: int, height: int) -> PictureBox:
    """Bars are the rows/columns at the frame edges that stay dark in every sample. Letterbox and
    pillarbox bars come in equal pairs; a lopsided dark band (a night sky, a dark floor) is picture, and
    so is everything when less than half the frame would remain (a black frame)."""
    whole = PictureBox(0, 0, width, height)
    if not samples:
        return whole
    # Every 4th pixel along a row (column) is plenty to tell a bar from picture, and 16x cheaper.
    row_level = np.max([np.quantile(s[:, ::4], 0.98, axis=1) for s in samples], axis=0)
    col_level = np.max([np.quantile(s[::4, :], 0.98, axis=0) for s in samples], axis=0)
    top, bottom = _bar_pair(row_level)
    left, right = _bar_pair(col_level)
    # Even offsets and sizes keep 4:2:0 chroma aligned with luma after the crop.
    x, y = _even_up(left), _even_up(top)
    w, h = _even_down(width - right - x), _even_down(height - bottom - y)
    if w < width / 2 or h < height / 2:
        return whole
    return PictureBox(x, y, w, h)


def _bar_pair(levels: np.ndarray) -> tuple[int, int]:
    """Sizes of the dark runs at both ends, or (0, 0) unless they match within 2 % (+2 px)."""
    first, last = _dark_run(levels), _dark_run(levels[::-1])
    if abs(first - last) > 2 + 0.02 * len(levels):
        return 0, 0
    return first, last


def _dark_run(levels: np.ndarray) -> int:
    bright = np.flatnonzero(levels > _BAR_LEVEL)
    return int(bright[0]) if bright.size else len(levels)


def _even_up(n: int) -> int:
    return n + (n & 1)


def _even_down(n: int) -> int:
    return n - (n & 1)


def _color_args(frame) -> str:
    """swscale assumes BT.601 for untagged video; players assume BT.709 for HD. Do what players do."""
    if frame.colorspace == _AVCOL_SPC_UNSPECIFIED:
        matrix = "bt709" if frame.height >= 720 else "bt601"
    else:
        matrix = "auto"
    rng = "pc" if frame.color_range == _AVCOL_RANGE_JPEG else "tv" if frame.format.name.startswith("yuv") else "auto"
    return f"in_color_matrix={matrix}:in_range={rng}"


def resample_times(timed_frames: Iterator, fps_out: float, start_s: float, count: int | None,
                   source_fps: float):
    """Pick, for each output time ``start + k / fps_out``, the source frame nearest in time.

    ``timed_frames`` yields ``(time_s, frame)`` in presentation order. Yields ``(k, frame, repeated)``,
    ``repeated`` being True when the frame already served output ``k - 1``. Stops after ``count`` output
    frames, or when the source runs out (half a source frame after its last one)."""
    k = 0
    previous = None  # (time, frame)
    given = None

    def wanted(until: float) -> bool:
        return (count is None or k < count) and start_s + k / fps_out < until

    for t, frame in timed_frames:
        if previous is not None:
            while wanted((previous[0] + t) / 2.0):
                yield k, previous[1], given is previous[1]
                given = previous[1]
                k += 1
            if count is not None and k >= count:
                return
        previous = (t, frame)
    if previous is not None:
        while wanted(previous[0] + 0.5 / source_fps):
            yield k, previous[1], given is previous[1]
            given = previous[1]
            k += 1


def decode_plates(info: SourceInfo, box: PictureBox, crop: tuple[int, int, int, int],
                  plate_size: tuple[int, int], fps_out: float, start_s: float, count: int | None):
    """Yield ``(k, plate, repeated)`` for each output frame: the cropped window of the picture,
    downscaled to ``plate_size`` through the prefilter and converted to BGRA by swscale in one step."""
    container, stream = open_video(info.path)
    origin = stream_origin(stream)
    cx, cy, cw, ch = crop
    with container:
        seek(container, stream, start_s)
        graph = None
        plate = None
        timed = ((frame_time(f, stream, origin, i, info.fps), f) for i, f in enumerate(container.decode(stream)))
        k = 0
        try:
            for k, frame, repeated in resample_times(timed, fps_out, start_s, count, float(info.fps)):
                if not repeated or plate is None:
                    if graph is None:
                        graph = _plate_graph(stream, frame, info.orientation, (box.x + cx, box.y + cy, cw, ch),
                                             plate_size)
                    graph.push(frame)
                    plate = graph.pull().to_ndarray()
                yield k, plate, repeated
        except av.error.FFmpegError as err:
            raise Equi360Error(f"{info.path}: decoding failed near output frame {k} ({err.strerror or err}); "
                               "the file may be damaged: re-export it") from None


# Without full_chroma_int/accurate_rnd swscale's YUV→RGB comes out ~1.5 levels dark.
_EXACT_COLOUR = "full_chroma_int+accurate_rnd"


def _plate_graph(stream, first_frame, orientation, crop, plate_size):
    x, y, w, h = crop
    return _graph(stream, [
        *_orientation_filters(orientation),
        ("crop", f"{w}:{h}:{x}:{y}"),
        ("scale", f"{plate_size[0]}:{plate_size[1]}:flags={PREFILTER}+{_EXACT_COLOUR}:{_color_args(first_frame)}"),
        ("format", "bgra"),
    ])


def _graph(stream, filters):
    graph = av.filter.Graph()
    chain = [graph.add_buffer(template=stream), *(graph.add(name, args) for name, args in filters),
             graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


class _Writer:
    """One video stream into a file (Matroska unless told otherwise)."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, codec: str, pix_fmt: str, options: dict,
                 container_format: str = "matroska"):
        self.container = av.open(str(path), "w", format=container_format)
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        self.stream.options = dict(options)
        self.stream.codec_context.thread_count = 0  # as many as there are cores

    def encode(self, frame) -> list:
        packets = self.stream.encode(frame)
        for p in packets:
            self.container.mux(p)
        return packets

    def close(self) -> None:
        self.encode(None)
        self.container.close()
        _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand the memory a closed encoder freed back to the system (glibc keeps it otherwise), so the
    next encoder's buffers don't stack on top of it in the process's peak."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


class LosslessVideoWriter(_Writer):
    """Encodes BGRA canvases (the 4th channel is ignored) losslessly with one of ``LOSSLESS_CODECS``."""

    def __init__(self, path: Path, width: int, height: int, fps: Fraction, codec: str = DEFAULT_LOSSLESS_CODEC):
        name, options = LOSSLESS_CODECS[codec]
        super().__init__(path, width, height, fps, name, "bgr0", options)

    def write(self, canvas_bgra: np.ndarray) -> None:
        self.encode(_bgr0_frame(canvas_bgra))

    def write_rgb(self, rgb: np.ndarray) -> None:
        self.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="bgr0"))


class PlaybackVideoWriter(_Writer):
    """RGB frames to H.264 or HEVC (4:2:0, limited range, converted and tagged as BT.709) in MP4: what a
    camera or an editor delivers, and what players and Blender read everywhere; with the source's sound
    when ``audio`` gives it (float chunks from :func:`.audio.source_audio`), muxed as the picture goes."""

    # Without accurate rounding and full chroma interpolation swscale is off by a level or two.
    _RGB_TO_YUV = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    # x264's adaptive quantisation moves bits from detailed areas to flat ones, the opposite of what a plate
    # that must come back exact needs: without it the plate's worst frame gains 1.1 dB (synthetic clip, CRF 12,
    # docs/QUALITY.md). x265's AQ does not cost the plate (measured), so it keeps its defaults.
    ENCODERS = {"h264": ("libx264", {"aq-mode": "0"}), "hevc": ("libx265", {"x265-params": "log-level=error"})}

    # Each encoder's speed preset: the fastest that keeps the plate ≥ 40 dB with files no larger than 1.25× the
    # medium preset's (bench/finish.py, docs/BENCHMARKS.md: at 3840×1920 H.264 veryfast encodes in half the time
    # of medium, 0.4 dB lower and smaller; ultrafast and superfast keep the plate but make files 2.5-6× larger;
    # at 7680×3840 x265's ultrafast takes 0.45× the time of medium, 2.3 dB lower, 4.9 above the goal).
    PRESETS = {"h264": "veryfast", "hevc": "ultrafast"}

    def __init__(self, path: Path, width: int, height: int, fps, crf: int = 16, title: str | None = None,
                 codec: str = "h264", pix_fmt: str = "yuv420p", audio=None, preset: str | None = None):
        name, options = self.ENCODERS[codec]
        super().__init__(path, width, height, fps, name, pix_fmt,
                         {"crf": str(crf), "preset": preset or self.PRESETS[codec], **options}, container_format="mp4")
        if codec == "hevc":
            self.stream.codec_tag = "hvc1"  # the tag Apple's players and QuickTime want
        if title:
            self.container.metadata["title"] = self.container.metadata["comment"] = title
        context = self.stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = 1  # BT.709, so readers don't guess
        context.color_range = 1  # limited ("tv")
        self.fps, self.frames, self.pix_fmt = Fraction(fps), 0, pix_fmt
        self._last_dts = None
        self._rgb = None
        self.audio = AudioEncoder(self.container, audio) if audio is not None else None

    def encode(self, frame) -> list:
        packets = self.stream.encode(frame)
        for p in packets:
            self._repair_dts(p)
            self.container.mux(p)
        return packets

    def convert(self, rgb: np.ndarray):
        """An RGB frame as the frame the encoder takes (its pixel format, BT.709, limited range)."""
        frame = self._rgb_frame(rgb).reformat(
            format=self.pix_fmt, src_colorspace="ITU709", dst_colorspace="ITU709", src_color_range="JPEG",
            dst_color_range="MPEG", interpolation=self._RGB_TO_YUV)
        if frame is self._rgb:  # nothing to convert: the encoder keeps this one
            self._rgb = None
        return frame

    def _rgb_frame(self, rgb: np.ndarray):
        """``rgb`` as a frame to convert: copied into one frame kept for the whole clip (the conversion makes the
        frame the encoder gets), which saves allocating and laying out a new one each time."""
        height, width = rgb.shape[:2]
        if self._rgb is None or (self._rgb.width, self._rgb.height) != (width, height):
            self._rgb = av.VideoFrame(width, height, "rgb24")
        if rgb.flags.c_contiguous and self._rgb.planes[0].line_size == width * 3:
            self._rgb.planes[0].update(rgb)
            return self._rgb
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")

    def _repair_dts(self, packet) -> None:
        """x265 stamps the packets of a clip of one or two frames with a decoding time read from memory it
        never set (about half the time, measured: 24 of 40 two-frame clips), which the MP4 muxer refuses. A
        decoding time after the presentation time, or further before it than any reordering reaches, is that
        bug: the packet gets the next decoding time that keeps the order."""
        if packet.dts is not None and packet.pts is not None and not packet.pts - 64 <= packet.dts <= packet.pts:
            packet.dts = packet.pts if self._last_dts is None else min(packet.pts, self._last_dts + 1)
        self._last_dts = packet.dts

    def write(self, rgb: np.ndarray) -> None:
        self.encode(self.convert(rgb))
        self.frames += 1
        if self.audio:
            self.audio.until(self.frames / self.fps)

    def close(self) -> None:
        if self.audio:
            self.audio.until(None)
        super().close()


def resize(frame: np.ndarray, width: int, height: int, interpolation: str = "LANCZOS") -> np.ndarray:
    """An RGB (H, W, 3) or gray (H, W) uint8 image resized by swscale."""
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24" if frame.ndim == 3 else "gray")
    return image.reformat(width=width, height=height, interpolation=interpolation).to_ndarray()


class PlanarResizer:
    """:func:`resize` for a stream of same-sized pictures, RGB (or BGRA, ``pixel_format="bgra"``) in, the three
    planes out (R, G, B: (height, width) uint8 views into swscale's output): the same values as :func:`resize`'s.
    Faster on both counts, measured from 2576×1280 to 3864×1920: swscale packs RGB slower than it resizes
    (58 against 24 ms), and its scaler, built once here instead of for every frame, costs 18 ms to build."""

    def __init__(self):
        self._reformatter = VideoReformatter()

    def __call__(self, frame: np.ndarray, width: int, height: int, interpolation: str = "LANCZOS",
                 pixel_format: str = "rgb24"):
        source = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=pixel_format)
        planar = self._reformatter.reformat(source, width=width, height=height, format="gbrp",
                                            interpolation=interpolation)
        green, blue, red = (np.frombuffer(plane, np.uint8).reshape(height, plane.line_size)[:, :width]
                            for plane in planar.planes)
        return red, green, blue


def resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask resized by nearest neighbour: its values stay the ones it had."""
    rows = (np.arange(height) * image.shape[0]) // height
    cols = (np.arange(width) * image.shape[1]) // width
    return image[rows][:, cols]


def encode_image(path: Path, codec: str, frame, options: dict | None = None) -> None:
    """One picture as an image file (``png``, ``exr``) through FFmpeg's encoder for it."""
    context = av.codec.CodecContext.create(codec, "w")
    context.width, context.height, context.pix_fmt = frame.width, frame.height, frame.format.name
    context.time_base = Fraction(1, 25)
    context.options = options or {}
    Path(path).write_bytes(b"".join(bytes(p) for p in context.encode(frame) + context.encode(None)))


def write_held_image(path: Path, image_gray: np.ndarray, frames: int, fps: Fraction) -> None:
    """A lossless video of one gray image held for ``frames`` frames. FFV1 codes every frame on its own,
    so the image is encoded once and its packet muxed again for each timestamp."""
    height, width = image_gray.shape
    writer = _Writer(path, width, height, fps, "ffv1", "gray", {})
    try:
        packets = writer.stream.encode(av.VideoFrame.from_ndarray(image_gray, format="gray"))
        packets += writer.stream.encode(None)
        (encoded,) = packets
        frame_ticks = round(1 / (fps * encoded.time_base))
        payload = bytes(encoded)
        for k in range(frames):
            packet = av.Packet(payload)
            packet.stream, packet.time_base = writer.stream, encoded.time_base
            packet.pts = packet.dts = k * frame_ticks
            packet.duration = frame_ticks
            packet.is_keyframe = True
            writer.container.mux(packet)
    finally:
        writer.container.close()


def _bgr0_frame(canvas_bgra: np.ndarray):
    """The canvas as a frame already in the encoder's pixel format, so no conversion pass runs."""
    height, width = canvas_bgra.shape[:2]
    frame = av.VideoFrame(width, height, "bgr0")
    if frame.planes[0].line_size != width * 4:  # padded rows: let PyAV lay them out
        return av.VideoFrame.from_ndarray(canvas_bgra, format="bgra").reformat(format="bgr0")
    frame.planes[0].update(canvas_bgra)
    return frame


def read_frames(path, fmt: str = "rgb24", start: int = 0) -> Iterator[np.ndarray]:
    """Decode every frame of a video from frame ``start`` on as arrays (``rgb24`` (H, W, 3) or ``gray``
    (H, W)), with the same colour conversion as the builder. A later ``start`` seeks to the keyframe
    before it instead of decoding everything up to it (a long clip's windows read from the middle)."""
    container, stream = open_video(Path(path))
    with container:
        fps, origin = float(stream.average_rate or stream.guessed_rate or 24), stream_origin(stream)
        if start:
            seek(container, stream, (start - 0.5) / fps)
        graph = None
        for frame in container.decode(stream):
            if start and round(frame_time(frame, stream, origin, 0, fps) * fps) < start:
                continue  # decoded from the keyframe before ``start``
            if graph is None:
                graph = _graph(stream, [*_orientation_filters(frame_orientation(frame, Path(path))),
                                        ("scale", f"flags=bilinear+{_EXACT_COLOUR}:{_color_args(frame)}"),
                                        ("format", fmt)])
            graph.push(frame)
            yield graph.pull().to_ndarray()
