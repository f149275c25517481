"""Every reader of a user's video sees the picture as it is meant to be shown: a phone's portrait clip
(stored sideways with a display matrix), mirrored clips, and the eight ways in between — checked against
FFmpeg's own player, which honours the matrix. And what is not a video, or is damaged, gets a clear error
or is read as far as it goes."""

import subprocess

import av
import numpy as np
import pytest

from blender_equi360 import Camera, CanvasSize, ReferenceSettings, build_reference
from blender_equi360.media.video import probe, read_frames
from conftest import smooth_texture


def ffmpeg():
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


def write_lossless(path, frames, rotation=0, hflip=False):
    """RGB frames stored exactly (H.264 RGB, qp 0) with a display matrix: ``rotation`` degrees counter-
    clockwise, then mirrored if ``hflip``, as a phone or an editor writes it."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=24)
        stream.width, stream.height, stream.pix_fmt, stream.options = width, height, "rgb24", {"qp": "0"}
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def shown_by_ffmpeg(path):
    """The first frame as FFmpeg's command line shows it (it turns the picture as the matrix says)."""
    info = subprocess.run([ffmpeg(), "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                           "rgb24", "-"], capture_output=True, check=True).stdout
    return info


def asymmetric(width=64, height=32):
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None, :] * (255 // width)
    image[..., 1] = np.arange(height)[:, None] * (255 // height)
    image[: height // 4, : width // 8, 2] = 255  # the top-left corner
    return image


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("hflip", [False, True])
def test_every_orientation_is_read_as_ffmpeg_shows_it(tmp_path, rotation, hflip):
    clip = write_lossless(tmp_path / "clip.mp4", [asymmetric()] * 2, rotation, hflip)
    info = probe(clip)
    frame = next(read_frames(clip))
    assert (info.width, info.height) == frame.shape[1::-1]
    assert frame.tobytes() == shown_by_ffmpeg(clip)


def test_a_portrait_phone_clip_gives_the_same_reference_as_the_same_picture_stored_upright(tmp_path):
    upright = [smooth_texture(144, 256, k / 4, min_period=12) for k in range(3)]  # a 9:16 portrait shot
    sideways = [np.rot90(f, -1) for f in upright]  # stored as the sensor saw it: 256×144, turned on display
    settings = ReferenceSettings(camera=Camera(60), size=CanvasSize(256, 128), frames=9)
    made = {}
    for name, frames, rotation in (("upright", upright, 0), ("phone", sideways, 90)):
        clip = write_lossless(tmp_path / f"{name}.mp4", frames, rotation)
        result = build_reference(clip, tmp_path / f"{name}.mkv", settings=settings)
        made[name] = (result, np.stack(list(read_frames(result.video))))
    assert probe(tmp_path / "phone.mp4").width == 144 and probe(tmp_path / "phone.mp4").height == 256
    assert np.array_equal(made["phone"][1], made["upright"][1])
    assert made["phone"][0].window == made["upright"][0].window
    assert any("turned 90° counter-clockwise" in note and "144x256" in note for note in made["phone"][0].notes)
