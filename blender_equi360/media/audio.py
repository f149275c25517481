"""The source clip's sound, carried into the 360° delivery in sync with the picture.

The delivered video's frame 0 is the source at ``start_s`` (its video stream's own clock), so the sound
is cut from that same instant, resampled to 48 kHz stereo and timed by sample count from 0. Streams:
nothing longer than one decoded packet is held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np

from .container import stream_origin

RATE = 48000
LAYOUT = "stereo"
AAC_BITRATE = 192_000


def has_audio(path) -> bool:
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio)
    except (av.error.FFmpegError, OSError):
        return False


def source_audio(path, start_s: float, duration_s: float) -> Iterator[np.ndarray]:
    """Float32 stereo chunks (2, n) at :data:`RATE` covering exactly ``duration_s`` from ``start_s``:
    silence where the source has none (before its sound starts, after it ends)."""
    total = round(duration_s * RATE)
    position = 0  # output samples given so far
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        origin = stream_origin(container.streams.video[0]) if container.streams.video else 0.0
        if start_s > 0:  # to a packet at or before the start; the samples before it are cut below
            container.seek(int(max(start_s + origin - 0.5, 0.0) / stream.time_base), stream=stream, backward=True)
        resampler = av.AudioResampler(format="fltp", layout=LAYOUT, rate=RATE)
        at = None  # where the next resampled sample falls, in output samples
        for frame in _decoded(container, stream):
            if at is None:
                if frame is None:
                    break
                at = round((float(frame.pts * stream.time_base) - origin - start_s) * RATE)
            for out in resampler.resample(frame):
                data = out.to_ndarray().astype(np.float32).reshape(2, -1)
                if at > position:  # a gap (or sound starting late): silence up to it
                    yield np.zeros((2, min(at, total) - position), np.float32)
                    position = min(at, total)
                lo, hi = max(position - at, 0), min(data.shape[1], total - at)
                if hi > lo:
                    yield data[:, lo:hi]
                    position = at + hi
                at += data.shape[1]
                if position >= total:
                    return
    if position < total:
        yield np.zeros((2, total - position), np.float32)


def _decoded(container, stream):
    """The stream's frames, then None (which flushes the resampler)."""
    for packet in container.demux(stream):
        for frame in packet.decode():
            if frame.pts is not None:
                yield frame
    yield None


class AudioEncoder:
    """AAC in the delivery's container, fed float chunks and muxed as the picture advances."""

    def __init__(self, container, chunks: Iterator[np.ndarray]):
        self.container, self.chunks = container, chunks
        self.stream = container.add_stream("aac", rate=RATE, layout=LAYOUT)
        self.stream.bit_rate = AAC_BITRATE
        self.buffer = np.zeros((2, 0), np.float32)
        self.sent = 0  # samples encoded

    def until(self, seconds: float | None) -> None:
        """Encode the sound up to ``seconds`` (None: all of it)."""
        size = self.stream.codec_context.frame_size or 1024
        goal = None if seconds is None else round(seconds * RATE)
        while goal is None or self.sent + self.buffer.shape[1] < goal + size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer = np.concatenate([self.buffer, chunk], axis=1)
            while self.buffer.shape[1] >= size:
                self._encode(self.buffer[:, :size])
                self.buffer = self.buffer[:, size:]
        if goal is None:
            if self.buffer.shape[1]:
                self._encode(self.buffer)
                self.buffer = self.buffer[:, :0]
            self._mux(self.stream.encode(None))

    def _encode(self, samples: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=LAYOUT)
        frame.sample_rate, frame.pts = RATE, self.sent
        self.sent += samples.shape[1]
        self._mux(self.stream.encode(frame))

    def _mux(self, packets) -> None:
        for packet in packets:
            self.container.mux(packet)


def audio_for(source: Path, start_s: float, duration_s: float):
    """The chunks to carry over, or None when the source has no sound."""
    return source_audio(source, start_s, duration_s) if has_audio(source) else None
