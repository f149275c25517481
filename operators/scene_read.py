# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading what the user set up: the movie strip (file, the frames it shows, fps) and the scene camera
(its true horizontal FOV, lens shift, pitch and roll), as the core's plain values."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import bpy

from ..blender_equi360 import Camera, Equi360Error
from . import compat

MIN_OK, MAX_OK = 10.0, 170.0      # horizontal FOV the projection accepts
SWEET_HFOV_DEG = (85.0, 115.0)    # the IC-LoRA was trained around 100°
SWEET_ASPECT = (2.2, 2.5)         # ... on 2.39:1 plates


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


def read_camera(scene, source: StripSource) -> tuple[CameraPose, list[str]]:
    """The scene camera as the core's :class:`Camera`, with warnings outside the model's sweet spot."""
    obj = scene.camera
    if obj is None:
        raise Equi360Error("the scene has no camera: add one, or set the scene's camera, to place the plate")
    data = obj.data
    if data.type != "PERSP":
        raise Equi360Error(f"camera {obj.name!r} is {data.type.lower()}: the plate needs a perspective camera")
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
    if not MIN_OK <= hfov <= MAX_OK:
        raise Equi360Error(f"camera {obj.name!r} shows the clip at {hfov:.1f}° across; it must be between "
                           f"{MIN_OK:.0f}° and {MAX_OK:.0f}°")
    camera = Camera(hfov_deg=hfov, pitch_deg=pitch, roll_deg=roll, shift_x=shift_x, shift_y=shift_y)
    warnings = []
    if not SWEET_HFOV_DEG[0] <= hfov <= SWEET_HFOV_DEG[1]:
        warnings.append(f"the clip spans {hfov:.0f}° across; the model works best near 100°")
    if not SWEET_ASPECT[0] <= clip_aspect <= SWEET_ASPECT[1]:
        warnings.append(f"the clip is {clip_aspect:.2f}:1; it will be cropped to 2.39:1, the model's shape")
    return CameraPose(camera, heading, tuple(obj.matrix_world.translation)), warnings


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
