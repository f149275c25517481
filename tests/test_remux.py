"""Cutting the span a job uses out of its clip without re-encoding (``blender_equi360/media/remux.py``), what the
remote engine is sent: the reference and the sound made from the cut are the ones made from the whole clip, and
a cut that would not save much, or not give the same frames, is not made."""

import av
import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.media.audio import source_audio
from blender_equi360.media.remux import cut_span
from blender_equi360.media.video import read_frames
from conftest import smooth_texture, write_clip


def take(path, frames=96, gop=12, sound=True, container_format=None):
    """A clip at 24 fps with a keyframe every ``gop`` frames and a sound whose pitch changes every frame."""
    with av.open(str(path), "w", format=container_format) as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 320, 134, "yuv420p"
        video.options = {"crf": "12", "preset": "veryfast", "g": str(gop), "bf": "2"}
        audio = None
        if sound:
            audio = container.add_stream("aac", rate=48000)
            audio.layout = "stereo"
        for k in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(smooth_texture(320, 134, k / 5), format="rgb24")):
                container.mux(packet)
            if audio is not None:
                wave = np.sin(np.arange(2000) * 0.01 * (k + 1)).astype(np.float32)[None].repeat(2, 0)
                frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 48000, k * 2000
                for packet in audio.encode(frame):
                    container.mux(packet)
        for stream in (video, audio):
            for packet in (stream.encode() if stream is not None else ()):
                container.mux(packet)
    return path


def reference_frames(clip, folder, start_s, frames):
    settings = ReferenceSettings(camera=Camera(100), size=CanvasSize(512, 256), frames=frames, start_s=start_s)
    build_reference(clip, folder / "reference.mkv", folder / "mask.mkv", settings)
    return list(read_frames(folder / "reference.mkv"))


@pytest.mark.parametrize("suffix, start_s, frames", [(".mp4", 1.25, 17), (".mp4", 37 / 24, 25), (".mkv", 2.0, 17)])
def test_a_cut_span_gives_the_same_reference_and_sound(tmp_path, suffix, start_s, frames):
    clip = take(tmp_path / f"take{suffix}")
    cut = cut_span(clip, tmp_path / "span", start_s, frames, None)
    assert cut is not None
    path, new_start = cut
    assert path.suffix == (".mov" if suffix == ".mp4" else ".mkv")  # the clip's own time bases kept
    assert path.stat().st_size < 0.7 * clip.stat().st_size
    assert new_start < start_s
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole, span = reference_frames(clip, tmp_path / "a", start_s, frames), reference_frames(path, tmp_path / "b",
                                                                                            new_start, frames)
    assert len(whole) == len(span) == frames and all(np.array_equal(a, b) for a, b in zip(whole, span))
    heard = [np.concatenate(list(source_audio(p, t, frames / 24)), axis=1) for p, t in ((clip, start_s),
                                                                                        (path, new_start))]
    assert np.array_equal(*heard)


def test_no_cut_when_it_saves_little_or_the_span_is_the_whole_clip(tmp_path):
    one_gop = write_clip(tmp_path / "one_gop.mp4", 40, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 5))
    assert cut_span(one_gop, tmp_path / "span", 1.0, 9, None) is None  # one keyframe: the span is the file
    clip = take(tmp_path / "take.mp4")
    assert cut_span(clip, tmp_path / "span", 0.0, None, None) is None
    assert cut_span(clip, tmp_path / "span", 0.2, 89, None) is None   # nearly all of it
    assert not list(tmp_path.glob("span*"))                          # and nothing left behind


def test_a_clip_without_sound_is_cut_too(tmp_path):
    clip = take(tmp_path / "silent.mp4", sound=False)
    path, new_start = cut_span(clip, tmp_path / "span", 2.5, 9, 24.0)
    assert not av.open(str(path)).streams.audio
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert all(np.array_equal(a, b) for a, b in zip(reference_frames(clip, tmp_path / "a", 2.5, 9),
                                                      reference_frames(path, tmp_path / "b", new_start, 9)))
