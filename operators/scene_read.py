# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading what the user set up: the movie strip (file, the frames it shows, fps) and the scene camera
(its true horizontal FOV, lens shift, pitch and roll), as the core's plain values."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import bpy

from ..blender_equi360 import Camera, Equi360Error
from ..blender_equi360.geometry.camera import MAX_HFOV_DEG, MIN_HFOV_DEG
from ..blender_equi360.media.video import PictureBox
from ..blender_equi360.stages.reference import TARGET_ASPECT, ReferenceSettings, plate_crop
from . import compat


@dataclass(frozen=True)
class StripSource:
    name: str
    filepath: str
    fps: float              # the file's
    width: int
    height: int
    start_s: float          # where in the file the shown range begins
    duration_s: float       # how long the shown range lasts
    timeline_start: int
    timeline_frames: int
    channel: int


@dataclass(frozen=True)
class CameraPose:
    camera: Camera          # FOV, shift, pitch, roll; yaw 0: the plate sits at the canvas centre
    heading_deg: float      # where the camera looks, from world +X towards +Y
    location: tuple


def active_movie_strip(scene):
    editor = scene.sequence_editor
    strip = editor.active_strip if editor else None
    if strip is None:
        raise Equi360Error("no active strip: select a movie strip in the Video Sequencer")
    if strip.type != "MOVIE":
        raise Equi360Error(f"strip {strip.name!r} is a {strip.type.lower()} strip: select a movie strip")
    return strip


def read_strip(scene, strip) -> StripSource:
    path = bpy.path.abspath(strip.filepath)
    # A movie strip on a missing file still exists, with fps 0 and a 1-frame duration.
    if not os.path.isfile(path):
        raise Equi360Error(f"strip {strip.name!r}: its file {path} is missing (relink it, then try again)")
    element = strip.elements[0] if len(strip.elements) else None
    if strip.fps <= 0 or element is None or element.orig_width == 0:
        raise Equi360Error(f"strip {strip.name!r}: Blender cannot read {path} as a movie")
    start = compat.strip_start(strip)
    # The strip plays one file frame per timeline frame, from its content start.
    offset_frames = start - strip.frame_start
    return StripSource(name=strip.name, filepath=path, fps=strip.fps, width=element.orig_width,
                       height=element.orig_height, start_s=max(offset_frames, 0) / strip.fps,
                       duration_s=strip.frame_final_duration / strip.fps, timeline_start=start,
                       timeline_frames=strip.frame_final_duration, channel=strip.channel)


def read_camera(scene, source: StripSource, settings: ReferenceSettings) -> tuple[CameraPose, list[str]]:
    """The scene camera at the strip's first frame as the core's :class:`Camera`, with warnings outside the
    sweet spot of the LoRA version ``settings`` are for (and its crop), and when the camera moves or zooms
    over the strip (not supported yet: the first frame's pose is used whatever frame the playhead shows)."""
    obj = scene.camera
    if obj is None:
        raise Equi360Error("the scene has no camera: add one, or set the scene's camera, to place the plate")
    if obj.data.type != "PERSP":
        raise Equi360Error(f"camera {obj.name!r} is {obj.data.type.lower()}: the plate needs a perspective camera")
    first, last = source.timeline_start, source.timeline_start + max(source.timeline_frames, 1) - 1
    playhead = (scene.frame_current, scene.frame_subframe)
    poses = {}
    try:
        for frame in sorted({first, (first + last) // 2, last}):
            scene.frame_set(frame)
            poses[frame] = _pose(scene, obj, source)
    finally:
        scene.frame_set(playhead[0], subframe=playhead[1])
    pose, hfov, clip_aspect = poses[first]
    if not MIN_HFOV_DEG < hfov < MAX_HFOV_DEG:
        raise Equi360Error(f"camera {obj.name!r} shows the clip at {hfov:.1f}° across; it must be between "
                           f"{MIN_HFOV_DEG:.0f}° and {MAX_HFOV_DEG:.0f}°")
    warnings = []
    moves = [(frame, other) for frame, (other, _, _) in poses.items() if _moved(pose, other)]
    if moves:
        frame, other = moves[-1]
        warnings.append(f"camera {obj.name!r} moves over the strip (heading {pose.heading_deg:.0f}° at frame {first}, "
                        f"{other.heading_deg:.0f}° at frame {frame}; FOV {pose.camera.hfov_deg:.0f}° → "
                        f"{other.camera.hfov_deg:.0f}°): a moving camera is not supported yet, the pose at the "
                        f"strip's first frame ({first}) is used for the whole clip")
    width, height = plate_crop(PictureBox(0, 0, source.width, source.height), settings.crop)[2:]
    warnings += settings.version.sweet_spot_warnings(hfov, width / height)
    if (width, height) != (source.width, source.height):
        warnings.append(f"the clip is {clip_aspect:.2f}:1; it will be cropped to {TARGET_ASPECT}:1 ({settings.crop})")
    return pose, warnings


def _pose(scene, obj, source: StripSource):
    """The camera's pose at the current frame: (CameraPose, horizontal FOV of the clip, the clip's aspect)."""
    data = obj.data
    # view_frame includes sensor fit, render aspect, pixel aspect and shift; it looks down -Z.
    corners = data.view_frame(scene=scene)
    xs, ys, depth = [c.x for c in corners], [c.y for c in corners], abs(corners[0].z)
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    frame_aspect = width / height
    # The strip is fitted into the render frame: a clip narrower than the frame does not fill its width.
    clip_aspect = source.width / source.height
    clip_width = width * min(1.0, clip_aspect / frame_aspect)
    hfov = math.degrees(2 * math.atan(clip_width / (2 * depth)))
    shift_x = (max(xs) + min(xs)) / 2 / clip_width
    shift_y = (max(ys) + min(ys)) / 2 / clip_width
    forward, right = _axes(obj.matrix_world)
    heading = math.degrees(math.atan2(forward[1], forward[0]))
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, forward[2]))))
    level_right = (math.sin(math.radians(heading)), -math.cos(math.radians(heading)), 0.0)
    level_up = _cross(level_right, forward)
    roll = math.degrees(math.atan2(_dot(right, level_up), _dot(right, level_right)))
    camera = Camera(hfov_deg=min(max(hfov, MIN_HFOV_DEG + 0.1), MAX_HFOV_DEG - 0.1), pitch_deg=pitch, roll_deg=roll,
                    shift_x=shift_x, shift_y=shift_y)
    return CameraPose(camera, heading, tuple(obj.matrix_world.translation)), hfov, clip_aspect


def _moved(a: CameraPose, b: CameraPose) -> bool:
    """More than a tenth of a degree of turn or zoom, a thousandth of the frame of shift, a millimetre of travel."""
    def angle(x, y):
        return abs((x - y + 180) % 360 - 180)
    turn = max(angle(a.heading_deg, b.heading_deg), abs(a.camera.pitch_deg - b.camera.pitch_deg),
               angle(a.camera.roll_deg, b.camera.roll_deg), abs(a.camera.hfov_deg - b.camera.hfov_deg))
    shift = max(abs(a.camera.shift_x - b.camera.shift_x), abs(a.camera.shift_y - b.camera.shift_y))
    travel = max(abs(p - q) for p, q in zip(a.location, b.location))
    return turn > 0.1 or shift > 1e-3 or travel > 1e-3


def _axes(matrix):
    rotation = matrix.to_3x3().normalized()
    forward = rotation @ _vector((0.0, 0.0, -1.0))
    right = rotation @ _vector((1.0, 0.0, 0.0))
    return tuple(forward.normalized()), tuple(right.normalized())


def _vector(values):
    from mathutils import Vector
    return Vector(values)


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
