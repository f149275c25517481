"""The span of a clip a job uses, as a file of its own, without re-encoding: what the remote engine is sent
instead of the whole clip (:mod:`..jobs.remote`).

The packets from the last keyframe at or before the span's start to past its end (and the sound over the same
time) are copied, untouched, into a Matroska file; the span's start in it is the same instant of the same
stream. It is used only when it is checked to give what the whole clip gives: the same picture size, rotation
and frame rate, the same frames (decoded from both and compared) at the start, the same number of frames over
the span. Anything else (a codec Matroska cannot hold, a clip whose packets carry no times, a span that saves
little) and the whole clip is sent instead: cutting never re-encodes and never guesses.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import av
import numpy as np

from ..jobs.job import SourceSpec
from .audio import has_audio, source_audio
from .container import stream_origin
from .video import probe

MARGIN_S = 1.0          # kept past the span's end (the readers look one frame ahead; the sound's last packet)
WORTH = 0.8             # a span of more than this share of the file: the whole file is sent
COMPARED_FRAMES = 3     # decoded from both files at the span's start and compared
SPAN_NAME = "span"


def span_for_upload(clip: Path, spec: SourceSpec, folder: Path) -> tuple[Path, float] | None:
    """The hook :class:`..jobs.remote.RemoteEngineProcess` takes: the span ``spec`` uses cut from ``clip`` into
    ``folder``, and the start in it; None to send the whole clip."""
    return cut_span(clip, Path(folder) / SPAN_NAME, spec.start_s, spec.frames, spec.fps)


def cut_span(clip: Path, out: Path, start_s: float, frames: int | None, fps: float | None) -> tuple[Path, float] | None:
    """Copy the packets ``clip`` needs to give ``frames`` frames (None: all) from ``start_s`` (seconds on its video
    stream's clock, as job.json's ``source``) at ``fps`` (None: its own) into ``out`` (its suffix is set: ``.mov``
    from an MP4 or QuickTime clip, keeping its streams' time bases exactly, ``.mkv`` otherwise); returns the file
    and the start in it, or None (and no file) when the cut is not worth it or would not give the same frames."""
    clip = Path(clip)
    info = probe(clip)
    rate = float(fps or info.fps)
    wanted, out = Path(out), None
    try:
        with av.open(str(clip)) as source:
            form = "mov" if "mov" in source.format.name.split(",") else "matroska"
            out = wanted.with_suffix(".mov" if form == "mov" else ".mkv")
            video = source.streams.video[0]
            if video.time_base is None:
                return None
            origin = stream_origin(video)
            key = _keyframe_at_or_before(source, video, start_s + origin)
            if key is None:
                return None
            end = None if frames is None else start_s + origin + frames / rate + MARGIN_S  # on the stream's clock
            if key * video.time_base - origin < 0.5 and end is None:
                return None  # from the first keyframe to the end: the whole file
            _copy(source, video, key, start_s + origin, end, out, form)
        if out.stat().st_size > WORTH * clip.stat().st_size:
            out.unlink()
            return None
        with av.open(str(out)) as cut:
            new_start = start_s + origin - stream_origin(cut.streams.video[0])
        if not _same_frames(clip, start_s, out, new_start, frames, rate, info):
            out.unlink()
            return None
        return out, new_start
    except (av.error.FFmpegError, ValueError, TypeError, OSError, IndexError):
        if out is not None:
            out.unlink(missing_ok=True)
        return None


def _keyframe_at_or_before(container, video, at: float) -> int | None:
    """The pts of the last keyframe at or before ``at`` seconds (packets only: nothing is decoded)."""
    container.seek(max(int(at / video.time_base), 0), stream=video, backward=True)
    key = None
    for packet in container.demux(video):
        if packet.pts is None:
            continue  # the demuxer's flush packets
        if packet.pts * video.time_base > at + 1e-6:
            if _decoded_at(packet) * video.time_base > at + 2.0:  # past the reordering of the frames around ``at``
                break
            continue
        if packet.is_keyframe:
            key = packet.pts if key is None else max(key, packet.pts)
    return key


def _copy(source, video, key: int, start: float, end: float | None, out: Path, form: str) -> None:
    """The video packets from the keyframe ``key`` (in decoding order) until their decoding time passes ``end``,
    and the first audio stream's packets from the one the sound's reader starts decoding at for a job starting
    at ``start`` (its seek: :func:`.audio.source_audio`) to ``end``, into a file of format ``form``."""
    audio = source.streams.audio[0] if source.streams.audio else None
    first_sound = None if audio is None else _audio_seek_packet(source, audio, start)
    options = {}
    if form == "mov":  # its edit lists count in the movie's time scale: one that holds every stream's ticks
        scale = math.lcm(*(s.time_base.denominator for s in (video, audio) if s is not None))
        if scale > 2**31 - 1:
            raise ValueError("no movie time scale holds these streams' ticks")
        options["movie_timescale"] = str(scale)
    with av.open(str(out), "w", format=form, options=options) as target:
        streams = {}
        for stream in (video, audio):
            if stream is not None:
                streams[stream.index] = target.add_stream_from_template(stream)
                streams[stream.index].time_base = stream.time_base  # (else times are rounded on the way)
        begin = key * video.time_base if first_sound is None else min(key * video.time_base,
                                                                      first_sound * audio.time_base)
        source.seek(max(int((begin - MARGIN_S) / video.time_base), 0), stream=video, backward=True)
        started = video_done = False
        audio_done = audio is None or first_sound is None
        for packet in source.demux(*(s for s in (video, audio) if s is not None)):
            if packet.pts is None:
                continue  # the demuxer's flush packets
            if packet.stream.index == video.index:
                if not started:
                    if packet.pts != key or not packet.is_keyframe:
                        continue
                    started = True
                if end is not None and _decoded_at(packet) * video.time_base > end:
                    video_done = True
                elif not video_done:
                    packet.stream = streams[video.index]
                    target.mux(packet)
            elif not audio_done and packet.pts >= first_sound:
                if end is not None and packet.pts * packet.time_base > end:
                    audio_done = True
                else:
                    packet.stream = streams[audio.index]
                    target.mux(packet)
            if video_done and audio_done:
                break


def _decoded_at(packet) -> int:
    """When the packet is decoded (its dts; Matroska gives none for a keyframe after a seek: its pts)."""
    return packet.dts if packet.dts is not None else packet.pts


def _audio_seek_packet(container, audio, start: float) -> int | None:
    """The pts of the audio packet :func:`.audio.source_audio` starts decoding at for ``start`` (seconds on the
    file's clock): the last one at or before half a second earlier, or the first one."""
    target = int(max(start - 0.5, 0.0) / audio.time_base)
    container.seek(target, stream=audio, backward=True)
    found = None
    for packet in container.demux(audio):
        if packet.pts is None:
            continue
        if packet.pts > target:
            return found if found is not None else packet.pts
        found = packet.pts
    return found


def _same_frames(clip: Path, start_s: float, cut: Path, new_start: float, frames: int | None, rate: float,
                 info) -> bool:
    """The cut gives what the clip gives: size, rotation, rate, the first frames of the span pixel for pixel,
    and as many frames over the span."""
    other = probe(cut)
    if (other.width, other.height, other.orientation, other.fps) != (info.width, info.height, info.orientation,
                                                                      info.fps):
        return False
    ours, theirs = _frames_from(clip, start_s), _frames_from(cut, new_start)
    for (t1, a), (t2, b) in itertools.islice(zip(ours, theirs), COMPARED_FRAMES):
        if abs(t1 - t2) > 2e-3 or a.shape != b.shape or not np.array_equal(a, b):
            return False
    span = None if frames is None else frames / rate
    if _count(clip, start_s, span, float(info.fps)) != _count(cut, new_start, span, float(info.fps)):
        return False
    if has_audio(clip) != has_audio(cut):
        return False
    if not has_audio(clip):
        return True
    heard = min(span or 1.0, 1.0)  # the sound the delivery takes from the span's start, decoded from both
    ours, theirs = (np.concatenate(list(source_audio(p, t, heard)), axis=1) for p, t in ((clip, start_s),
                                                                                         (cut, new_start)))
    return np.array_equal(ours, theirs)


def _frames_from(path: Path, start_s: float):
    """(time from ``start_s``, RGB array) of the frames from the one at ``start_s`` on (half a frame's leeway)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        origin = stream_origin(video)
        half = 0.5 / float(video.average_rate or video.guessed_rate or 24)
        container.seek(max(int((start_s + origin - 1.0) / video.time_base), 0), stream=video, backward=True)
        for frame in container.decode(video):
            if frame.pts is None:
                continue
            t = float(frame.pts * video.time_base) - origin - start_s
            if t >= -half:
                yield t, frame.to_ndarray(format="rgb24")


def _count(path: Path, start_s: float, span: float | None, fps: float) -> int:
    """Video packets whose times fall in the span (nothing decoded)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        origin = stream_origin(video)
        lo = start_s - 0.5 / fps
        hi = None if span is None else start_s + span - 0.5 / fps
        container.seek(max(int((start_s + origin - 2.0) / video.time_base), 0), stream=video, backward=True)
        count = 0
        for packet in container.demux(video):
            if packet.pts is None:
                continue
            t = float(packet.pts * video.time_base) - origin
            if lo <= t and (hi is None or t < hi):
                count += 1
            if hi is not None and float(_decoded_at(packet) * video.time_base) - origin > hi + 2:
                break
        return count
