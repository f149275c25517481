# SPDX-License-Identifier: GPL-3.0-or-later
"""Render a procedural city establishing shot with Blender (bpy + Cycles on the CPU).

Writes, into an output folder:

* ``city_flat.mp4``: the flat 2.39:1 clip a user would bring (H.264, yuv420p, static camera, cars driving);
* ``city_pano.mkv``: the ground-truth 360° equirect panorama seen from the same point (lossless FFV1),
  for the first ``pano_frames`` frames of the same animation;
* ``city.json``: the camera and the render parameters.

The camera angles follow the project's conventions (:mod:`blender_equi360.geometry.camera`), so building the
reference from the flat clip with the same angles must land every pixel where the panorama has it.

Usage::

    python samples/make_city.py OUT_DIR [--flat-size 1280x536] [--pano-size 1920x960] [--frames 121]
        [--pano-frames 1] [--fps 24] [--hfov 100] [--yaw 0] [--pitch 0] [--roll 0] [--samples 8]

A folder that already holds the outputs of the same parameters is left alone, so demos can call this
every time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from blender_equi360.geometry.camera import Camera, canvas_to_blender  # noqa: E402
from blender_equi360.jobs.errors import Equi360Error  # noqa: E402
from blender_equi360.media.video import LosslessVideoWriter, PlaybackVideoWriter  # noqa: E402

SCENE_VERSION = 2  # bump when the scene changes, so cached outputs are rendered again
FLAT_NAME, PANO_NAME, META_NAME = "city_flat.mp4", "city_pano.mkv", "city.json"

# The city: square blocks on a grid of roads; the camera hangs above the crossing at the origin.
BLOCK_PITCH = 50.0   # metres between road centre lines
ROAD_WIDTH = 12.0
SIDEWALK = 2.0
CITY_BLOCKS = 8      # blocks from the origin to the city edge, each way
CAMERA_LOCATION = (0.0, 0.0, 45.0)
DOWNTOWN = (230.0, -150.0)  # the tall cluster: ahead and to the right of the default heading
SUN_ELEVATION_DEG, SUN_AZIMUTH_DEG = 38.0, 140.0  # azimuth from +X towards +Y: behind-left
AMBIENT = 0.3        # emission as a fraction of the albedo: stands in for sky light (no bounces)

FACADES = [(0.72, 0.66, 0.55), (0.62, 0.30, 0.22), (0.55, 0.56, 0.58), (0.30, 0.42, 0.58),
           (0.85, 0.84, 0.80), (0.66, 0.52, 0.36), (0.40, 0.48, 0.40)]
CAR_COLOURS = [(0.80, 0.05, 0.04), (0.95, 0.75, 0.05), (0.05, 0.20, 0.75), (0.92, 0.92, 0.92),
               (0.05, 0.05, 0.06), (0.10, 0.55, 0.20), (0.95, 0.40, 0.05), (0.45, 0.10, 0.55)]
ASPHALT, CONCRETE, PARK, FIELDS = (0.10, 0.10, 0.11), (0.55, 0.54, 0.50), (0.20, 0.45, 0.15), (0.33, 0.38, 0.22)


@dataclass(frozen=True)
class CityParams:
    flat_size: tuple[int, int] = (1280, 536)
    pano_size: tuple[int, int] = (1920, 960)
    frames: int = 121
    pano_frames: int = 1
    fps: int = 24
    hfov_deg: float = 100.0
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    samples: int = 8

    def camera(self) -> Camera:
        return Camera(hfov_deg=self.hfov_deg, yaw_deg=self.yaw_deg, pitch_deg=self.pitch_deg,
                      roll_deg=self.roll_deg)


def make_city(out_dir, params: CityParams = CityParams(), log=print) -> dict:
    """Render the flat clip and the panorama into ``out_dir`` unless they are there already for the same
    parameters. Returns the metadata written to ``city.json``."""
    if params.frames < 1 or params.samples < 1 or params.fps < 1:
        raise ValueError("frames, samples and fps must be 1 or more")
    if not 1 <= params.pano_frames <= params.frames:
        raise ValueError("pano_frames must be between 1 and frames")
    params.camera()  # validates the angles before any rendering
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = {"scene_version": SCENE_VERSION, "params": asdict(params)}
    cached = _read_json(out_dir / META_NAME)
    as_json = json.loads(json.dumps(expected))  # tuples read back as lists
    if (cached and {k: cached.get(k) for k in expected} == as_json
            and (out_dir / FLAT_NAME).is_file() and (out_dir / PANO_NAME).is_file()):
        log(f"city: {out_dir} is up to date")
        return cached

    # city.json goes last and the old one first: a run cut short never looks finished.
    (out_dir / META_NAME).unlink(missing_ok=True)
    started = time.perf_counter()
    scene, flat_camera, pano_camera = build_scene(params)
    with tempfile.TemporaryDirectory(prefix="city-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        flat_s = render_flat(scene, flat_camera, params, tmp / FLAT_NAME, tmp, log)
        pano_s = render_pano(scene, pano_camera, params, tmp / PANO_NAME, tmp, log)
        os.replace(tmp / FLAT_NAME, out_dir / FLAT_NAME)
        os.replace(tmp / PANO_NAME, out_dir / PANO_NAME)
    meta = {
        **expected,
        "camera": {"hfov_deg": params.hfov_deg, "yaw_deg": params.yaw_deg, "pitch_deg": params.pitch_deg,
                   "roll_deg": params.roll_deg, "location_m": list(CAMERA_LOCATION)},
        "fps": params.fps,
        "flat": {"file": FLAT_NAME, "width": params.flat_size[0], "height": params.flat_size[1],
                 "frames": params.frames, "render_s": round(flat_s, 1)},
        "pano": {"file": PANO_NAME, "width": params.pano_size[0], "height": params.pano_size[1],
                 "frames": params.pano_frames, "first_frame": 1, "render_s": round(pano_s, 1)},
    }
    (out_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    log(f"city: done in {time.perf_counter() - started:.1f} s -> {out_dir}")
    return meta


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- scene -----------------------------------------------------------------------------------------

def build_scene(params: CityParams):
    """The city in a fresh file; returns ``(scene, flat camera, panorama camera)``."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    _render_settings(scene, params)
    scene.world = _sky()
    _sun(scene)
    rng = random.Random(360)  # a fixed city: the test and the demo must see the same one
    painted, facade = _painted_material(), _facade_material()
    _add_boxes(scene, "Ground", _ground_boxes(), painted)
    buildings, landmarks = _building_boxes(rng)
    _add_boxes(scene, "Buildings", buildings, facade)
    _add_boxes(scene, "Landmarks", landmarks, painted)
    _add_cars(scene, rng, painted, params.fps)
    return scene, _flat_camera(scene, params.camera()), _pano_camera(scene)


def _render_settings(scene, params: CityParams) -> None:
    """Noise-free and fast: direct sunlight only, a fixed seed, no denoiser, no adaptive sampling.
    The flat and the panorama renders share all of this."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = params.samples
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = False
    scene.cycles.max_bounces = 0
    scene.cycles.seed = 0
    scene.cycles.use_animated_seed = False
    scene.render.use_motion_blur = False
    scene.render.use_sequencer = False  # the VSE would replace the camera's picture if it held strips
    scene.render.use_compositing = False
    scene.render.use_persistent_data = True  # only the cars change between frames
    scene.render.fps, scene.render.fps_base = params.fps, 1.0
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"  # AgX would tone-map the colours away from sRGB
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    scene.render.dither_intensity = 0.0  # its noise would differ between a region and the whole frame
    image = scene.render.image_settings
    image.media_type, image.file_format = "IMAGE", "PNG"
    image.color_mode, image.color_depth, image.compression = "RGB", "8", 0  # a scratch file: write it fast


def _sky():
    """A sky gradient with soft clouds, seen only by camera rays: the sun alone lights the scene, so the
    renders stay noise-free at a few samples."""
    import bpy

    world = bpy.data.worlds.new("Sky")
    world.cycles.sampling_method = "NONE"
    nt = world.node_tree
    nodes, links = nt.nodes, nt.links
    nodes.clear()
    coords = nodes.new("ShaderNodeTexCoord")
    xyz = nodes.new("ShaderNodeSeparateXYZ")
    links.new(coords.outputs["Generated"], xyz.inputs[0])

    gradient = nodes.new("ShaderNodeValToRGB")
    stops = gradient.color_ramp.elements
    stops[0].position, stops[0].color = 0.0, (0.78, 0.80, 0.82, 1)
    stops[1].position, stops[1].color = 0.45, (0.16, 0.32, 0.72, 1)
    mid = stops.new(0.08)
    mid.color = (0.52, 0.64, 0.84, 1)
    links.new(xyz.outputs["Z"], gradient.inputs["Fac"])

    # Clouds: low-frequency noise, faded out towards the horizon where they would shimmer.
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 2.5
    noise.inputs["Detail"].default_value = 1.0
    links.new(coords.outputs["Generated"], noise.inputs["Vector"])
    cover = nodes.new("ShaderNodeValToRGB")
    cover.color_ramp.elements[0].position = 0.52
    cover.color_ramp.elements[1].position = 0.72
    links.new(noise.outputs["Fac"], cover.inputs["Fac"])
    fade = nodes.new("ShaderNodeMath")
    fade.operation, fade.use_clamp = "MULTIPLY", True
    fade.inputs[1].default_value = 6.0
    links.new(xyz.outputs["Z"], fade.inputs[0])
    amount = nodes.new("ShaderNodeMath")
    amount.operation = "MULTIPLY"
    links.new(cover.outputs["Color"], amount.inputs[0])
    links.new(fade.outputs["Value"], amount.inputs[1])
    clouds = nodes.new("ShaderNodeMix")
    clouds.data_type = "RGBA"
    clouds.inputs["B"].default_value = (0.95, 0.95, 0.96, 1)
    links.new(amount.outputs["Value"], clouds.inputs["Factor"])
    links.new(gradient.outputs["Color"], clouds.inputs["A"])

    sky = nodes.new("ShaderNodeBackground")
    links.new(clouds.outputs["Result"], sky.inputs["Color"])
    dark = nodes.new("ShaderNodeBackground")
    dark.inputs["Color"].default_value = (0, 0, 0, 1)
    camera_only = nodes.new("ShaderNodeMixShader")
    links.new(nodes.new("ShaderNodeLightPath").outputs["Is Camera Ray"], camera_only.inputs["Fac"])
    links.new(dark.outputs["Background"], camera_only.inputs[1])
    links.new(sky.outputs["Background"], camera_only.inputs[2])
    links.new(camera_only.outputs["Shader"], nodes.new("ShaderNodeOutputWorld").inputs["Surface"])
    return world


def _sun(scene) -> None:
    import bpy

    light = bpy.data.lights.new("Sun", "SUN")
    light.energy = 2.2
    light.angle = 0.0  # a point-like sun: hard shadows with no sampling noise
    sun = bpy.data.objects.new("Sun", light)
    # A sun light shines along its local -Z: aim it from (azimuth, elevation) towards the city.
    sun.rotation_euler = (0.0, math.radians(90.0 - SUN_ELEVATION_DEG), math.radians(SUN_AZIMUTH_DEG))
    scene.collection.objects.link(sun)


def _shaded(nt, colour_socket):
    """Diffuse under the sun plus a little emission for ambient light, so shadows are not pure black.

    The emission shows to camera rays only: even with no bounces, Cycles follows one BSDF ray from each
    shading point to pick up light from emitting surfaces it hits, and that would turn every
    neighbour's ambient glow into noise."""
    nodes, links = nt.nodes, nt.links
    diffuse = nodes.new("ShaderNodeBsdfDiffuse")
    links.new(colour_socket, diffuse.inputs["Color"])
    glow = nodes.new("ShaderNodeEmission")
    links.new(colour_socket, glow.inputs["Color"])
    strength = nodes.new("ShaderNodeMath")
    strength.operation = "MULTIPLY"
    strength.inputs[1].default_value = AMBIENT
    links.new(nodes.new("ShaderNodeLightPath").outputs["Is Camera Ray"], strength.inputs[0])
    links.new(strength.outputs["Value"], glow.inputs["Strength"])
    add = nodes.new("ShaderNodeAddShader")
    links.new(diffuse.outputs["BSDF"], add.inputs[0])
    links.new(glow.outputs["Emission"], add.inputs[1])
    links.new(add.outputs["Shader"], nodes["Material Output"].inputs["Surface"])


def _new_material(name):
    import bpy

    mat = bpy.data.materials.new(name)
    # The emission is ambient fill for the camera, not a light: sampling it as one only costs time.
    mat.cycles.emission_sampling = "NONE"
    nt = mat.node_tree
    for node in list(nt.nodes):
        if node.type != "OUTPUT_MATERIAL":
            nt.nodes.remove(node)
    return mat, nt


def _painted_material():
    """Flat colour per face, read from the mesh's ``colour`` attribute."""
    mat, nt = _new_material("Painted")
    colour = nt.nodes.new("ShaderNodeAttribute")
    colour.attribute_name = "colour"
    _shaded(nt, colour.outputs["Color"])
    return mat


def _facade_material():
    """Per-building wall colour with a grid of windows (a brick texture in metres along the walls: one
    brick per window bay and floor, the mortar is the wall); roofs stay plain."""
    mat, nt = _new_material("Facade")
    nodes, links = nt.nodes, nt.links
    wall = nodes.new("ShaderNodeAttribute")
    wall.attribute_name = "colour"
    uv = nodes.new("ShaderNodeUVMap")
    bricks = nodes.new("ShaderNodeTexBrick")
    bricks.offset, bricks.squash = 0.0, 1.0
    bricks.inputs["Scale"].default_value = 1.0
    bricks.inputs["Brick Width"].default_value = 3.2
    bricks.inputs["Row Height"].default_value = 3.6
    bricks.inputs["Mortar Size"].default_value = 0.7
    bricks.inputs["Mortar Smooth"].default_value = 0.2
    bricks.inputs["Bias"].default_value = 0.0
    bricks.inputs["Color1"].default_value = (0.06, 0.08, 0.12, 1)  # dark glass
    bricks.inputs["Color2"].default_value = (0.55, 0.60, 0.62, 1)  # glass catching the sky
    links.new(uv.outputs["UV"], bricks.inputs["Vector"])
    links.new(wall.outputs["Color"], bricks.inputs["Mortar"])
    # Roofs: the normal points up, so show the plain wall colour there.
    geometry = nodes.new("ShaderNodeNewGeometry")
    up = nodes.new("ShaderNodeSeparateXYZ")
    links.new(geometry.outputs["Normal"], up.inputs[0])
    is_roof = nodes.new("ShaderNodeMath")
    is_roof.operation = "GREATER_THAN"
    is_roof.inputs[1].default_value = 0.5
    links.new(up.outputs["Z"], is_roof.inputs[0])
    pick = nodes.new("ShaderNodeMix")
    pick.data_type = "RGBA"
    links.new(is_roof.outputs["Value"], pick.inputs["Factor"])
    links.new(bricks.outputs["Color"], pick.inputs["A"])
    links.new(wall.outputs["Color"], pick.inputs["B"])
    _shaded(nt, pick.outputs["Result"])
    return mat


# --- geometry --------------------------------------------------------------------------------------

# A box's corners are indexed x + 2y + 4z (0 = min, 1 = max); faces are wound counter-clockwise seen
# from outside, so normals point out.
_BOX_FACES = ((0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5))


def _box(x0, y0, z0, x1, y1, z1, colour):
    return (min(x0, x1), min(y0, y1), z0, max(x0, x1), max(y0, y1), z1, colour)


def _add_boxes(scene, name, boxes, material):
    """One mesh object holding all ``boxes``, with a per-face ``colour`` and UVs in metres along the
    walls (u horizontal, v height), so window grids line up with floors."""
    import bpy

    verts, faces, uvs, colours = [], [], [], []
    for x0, y0, z0, x1, y1, z1, colour in boxes:
        base = len(verts)
        verts += [((x0, x1)[i & 1], (y0, y1)[(i >> 1) & 1], (z0, z1)[i >> 2]) for i in range(8)]
        for k, face in enumerate(_BOX_FACES):
            faces.append(tuple(base + i for i in face))
            colours.append(colour)
            for i in face:
                x, y, z = verts[base + i]
                uvs.append((x, y) if k < 2 else (x, z) if k < 4 else (y, z))
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts, [], faces)
    mesh.uv_layers.new(name="UVMap").data.foreach_set("uv", np.asarray(uvs, dtype=np.float32).ravel())
    attr = mesh.attributes.new("colour", "FLOAT_COLOR", "FACE")
    rgba = np.ones((len(colours), 4), dtype=np.float32)
    rgba[:, :3] = colours
    attr.data.foreach_set("color", rgba.ravel())
    mesh.materials.append(material)
    mesh.validate()
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    return obj


def _road_centres():
    return [k * BLOCK_PITCH for k in range(-CITY_BLOCKS, CITY_BLOCKS + 1)]


def _ground_boxes():
    """Fields to the horizon, the city's asphalt, and a raised slab per block (the gaps are roads).

    Each layer's box starts inside the one below (as buildings start inside their slab): faces that
    coincide would leave ties for the ray tracer to break one way or the other."""
    far, edge = 3000.0, CITY_BLOCKS * BLOCK_PITCH + ROAD_WIDTH / 2
    boxes = [_box(-far, -far, -0.2, far, far, 0.0, FIELDS), _box(-edge, -edge, -0.1, edge, edge, 0.02, ASPHALT)]
    for bx, by in _blocks():
        half = (BLOCK_PITCH - ROAD_WIDTH) / 2
        colour = PARK if _is_park(bx, by) else CONCRETE
        boxes.append(_box(bx - half, by - half, 0.0, bx + half, by + half, 0.15, colour))
    return boxes


def _blocks():
    """Centres of the city blocks."""
    centres = _road_centres()
    return [((a + b) / 2, (c + d) / 2) for a, b in zip(centres, centres[1:]) for c, d in zip(centres, centres[1:])]


def _is_park(bx, by):
    return (bx, by) in {(-75.0, 25.0), (125.0, 75.0), (-25.0, -175.0), (-175.0, -125.0)}


def _building_boxes(rng):
    """Buildings on every block but the parks: taller towards downtown and away from the camera (so it
    overlooks its surroundings), plus two landmarks that make any mirroring or turn obvious."""
    buildings = []
    half = (BLOCK_PITCH - ROAD_WIDTH) / 2 - SIDEWALK
    for bx, by in _blocks():
        if _is_park(bx, by):
            continue
        lots = rng.choice([1, 2, 2, 4, 4, 4])
        for x0, y0, x1, y1 in _split(bx - half, by - half, bx + half, by + half, lots, rng):
            gap = rng.uniform(1.0, 3.0)
            x0, y0, x1, y1 = x0 + gap, y0 + gap, x1 - gap, y1 - gap
            near = min(1.0, math.hypot(bx, by) / 120.0)
            downtown = math.exp(-((bx - DOWNTOWN[0]) ** 2 + (by - DOWNTOWN[1]) ** 2) / (2 * 110.0 ** 2))
            height = rng.uniform(8.0, 14.0) + near * rng.uniform(0.0, 18.0) + downtown * rng.uniform(40.0, 110.0)
            height = 3.6 * max(2, round(height / 3.6))  # whole floors
            buildings.append(_box(x0, y0, 0.1, x1, y1, height, rng.choice(FACADES)))

    landmarks = []
    # A red-and-white striped tower ahead-left of the default heading.
    tx, ty = 175.0, 125.0
    for k in range(16):
        colour = (0.80, 0.08, 0.06) if k % 2 == 0 else (0.92, 0.92, 0.90)
        landmarks.append(_box(tx - 5, ty - 5, max(0.1, 9.0 * k), tx + 5, ty + 5, 9.0 * (k + 1), colour))
    landmarks.append(_box(tx - 1, ty - 1, 143.0, tx + 1, ty + 1, 175.0, (0.85, 0.85, 0.85)))  # the mast
    # A long yellow hall behind and to the left of the camera.
    landmarks.append(_box(-130.0, 60.0, 0.1, -65.0, 90.0, 16.0, (0.95, 0.72, 0.10)))
    return buildings, landmarks


def _split(x0, y0, x1, y1, lots, rng):
    if lots == 1:
        return [(x0, y0, x1, y1)]
    xm, ym = (x0 + x1) / 2 + rng.uniform(-4, 4), (y0 + y1) / 2 + rng.uniform(-4, 4)
    if lots == 2:
        return [(x0, y0, xm, y1), (xm, y0, x1, y1)] if rng.random() < 0.5 else [(x0, y0, x1, ym), (x0, ym, x1, y1)]
    return [(x0, y0, xm, ym), (xm, y0, x1, ym), (x0, ym, xm, y1), (xm, ym, x1, y1)]


def _add_cars(scene, rng, material, fps):
    """Traffic keeping to the right-hand lane: most of it on the avenue ahead (along +X) where the
    default view sees it, the rest on cross streets and all around for the panorama.

    Positions are driver expressions of the frame (simple ones, evaluated without Python), so a frame
    number shows the same traffic in the flat and the panorama renders."""
    city = CITY_BLOCKS * BLOCK_PITCH
    routes = [("x", 0.0, rng.choice((1, -1)), rng.uniform(80.0, city - 80.0)) for _ in range(12)]
    routes += [("y", x, rng.choice((1, -1)), rng.uniform(-150.0, 150.0)) for x in (100.0, 150.0, 200.0, 250.0)]
    routes += [(rng.choice("xy"), rng.choice(_road_centres()[2:-2]), rng.choice((1, -1)),
                rng.uniform(-city + 80.0, city - 80.0)) for _ in range(16)]
    for i, (axis, centre, direction, start) in enumerate(routes):
        colour = rng.choice(CAR_COLOURS)
        along, across = (0, 1) if axis == "x" else (1, 0)
        # Modelled along its own +X, then turned to face the direction of travel.
        body = [_box(-2.3, -0.95, 0.35, 2.3, 0.95, 1.2, colour),
                _box(-1.4, -0.85, 1.1, 1.0, 0.85, 1.75, (0.08, 0.09, 0.11))]  # the cabin, dark glass
        car = _add_boxes(scene, f"Car{i}", body, material)
        heading = {("x", 1): 0.0, ("x", -1): 180.0, ("y", 1): 90.0, ("y", -1): -90.0}[axis, direction]
        car.rotation_euler = (0.0, 0.0, math.radians(heading))
        right_lane = 3.0 * direction * (-1 if axis == "x" else 1)
        position = [0.0, 0.0, 0.0]
        position[across] = centre + right_lane
        car.location = position
        speed = rng.uniform(8.0, 15.0) * direction  # metres per second
        driver = car.driver_add("location", along).driver
        driver.type = "SCRIPTED"
        driver.expression = f"{start:.3f} + {speed:.4f} * (frame - 1) / {fps}"


def _flat_camera(scene, camera: Camera):
    """The user's camera, aimed with the project's angles (canvas frame: forward, right, up)."""
    import bpy
    from mathutils import Matrix

    cam = bpy.data.cameras.new("Flat")
    cam.sensor_fit = "HORIZONTAL"
    cam.lens_unit = "FOV"
    cam.angle = math.radians(camera.hfov_deg)
    cam.clip_start, cam.clip_end = 0.1, 10000.0
    forward, right, up = (canvas_to_blender(camera.rotation()[:, i]) for i in range(3))
    # A Blender camera looks down its local -Z with +Y up and +X to the right.
    axes = np.stack([right, up, -forward], axis=1)
    matrix = Matrix(axes.tolist()).to_4x4()
    matrix.translation = CAMERA_LOCATION
    obj = bpy.data.objects.new("Flat", cam)
    obj.matrix_world = matrix
    scene.collection.objects.link(obj)
    return obj


def _pano_camera(scene):
    """Equirect camera looking along +X, level: its picture centre is yaw 0 and its right is -Y, the
    project's canvas."""
    import bpy

    cam = bpy.data.cameras.new("Pano")
    cam.type = "PANO"
    cam.panorama_type = "EQUIRECTANGULAR"
    cam.clip_start, cam.clip_end = 0.1, 10000.0
    obj = bpy.data.objects.new("Pano", cam)
    obj.location = CAMERA_LOCATION
    obj.rotation_euler = (math.radians(90.0), 0.0, math.radians(-90.0))
    scene.collection.objects.link(obj)
    return obj


# --- rendering -------------------------------------------------------------------------------------

REGION_PAD_PX = 3  # around a car's region: covers the 1.5 px pixel filter with room to spare


def render_flat(scene, camera, params: CityParams, path: Path, tmp: Path, log=print) -> float:
    """The user's clip, H.264 in yuv420p at a high quality.

    Only the cars move, so the city is rendered once without them and each frame re-renders just the
    regions that a car or its shadow can touch. With no bounces, a fixed seed and per-pixel sampling,
    Cycles renders a region pixel-for-pixel as it renders it inside the whole frame, so the composite
    is bit-for-bit a full render (checked), at a fraction of the cost: ~6x less for the default clip."""
    started = time.perf_counter()
    width, height = params.flat_size
    _set_camera(scene, camera, params.flat_size)
    cars = [obj for obj in scene.objects if obj.name.startswith("Car")]
    for car in cars:
        car.hide_render = True
    background = _render(scene, tmp / "flat.png")
    for car in cars:
        car.hide_render = False
    log(f"city: flat background {width}x{height} ({time.perf_counter() - started:.1f} s)")

    with closing(PlaybackVideoWriter(path, width, height, params.fps)) as writer:
        for frame in range(1, params.frames + 1):
            scene.frame_set(frame)
            picture = background.copy()
            for x0, y0, x1, y1 in _car_regions(scene, camera, cars, params.flat_size):
                picture[y0:y1, x0:x1] = _render(scene, tmp / "flat.png", (x0, y0, x1, y1))
            writer.write(picture)
            if frame % 20 == 0 or frame == params.frames:
                log(f"city: flat frame {frame}/{params.frames} ({time.perf_counter() - started:.1f} s)")
    return time.perf_counter() - started


def render_pano(scene, camera, params: CityParams, path: Path, tmp: Path, log=print) -> float:
    """The ground truth: whole equirect frames, packed losslessly (FFV1) into Matroska."""
    started = time.perf_counter()
    _set_camera(scene, camera, params.pano_size)
    with closing(LosslessVideoWriter(path, *params.pano_size, params.fps, codec="ffv1")) as writer:
        for frame in range(1, params.pano_frames + 1):
            scene.frame_set(frame)
            rgb = _render(scene, tmp / "pano.png")
            writer.write(np.dstack([rgb[..., ::-1], np.zeros_like(rgb[..., :1])]))  # RGB → BGRA
            log(f"city: pano frame {frame}/{params.pano_frames} ({time.perf_counter() - started:.1f} s)")
    return time.perf_counter() - started


def _set_camera(scene, camera, size) -> None:
    scene.camera = camera
    scene.render.resolution_x, scene.render.resolution_y = size


def _render(scene, png: Path, region=None) -> np.ndarray:
    """Render the whole frame, or only ``region`` = (x0, y0, x1, y1) in pixels from the top-left, and
    return it as (h, w, 3) uint8 RGB: the display-referred 8-bit picture Blender would save."""
    import bpy

    r = scene.render
    r.use_border = r.use_crop_to_border = region is not None
    if region is not None:
        x0, y0, x1, y1 = region
        w, h = r.resolution_x, r.resolution_y
        # Blender's border is in fractions from the bottom-left and truncates to whole pixels: aim a
        # quarter-pixel in so the truncation lands on the intended edges.
        r.border_min_x, r.border_max_x = (x0 + 0.25) / w, (x1 + 0.25) / w
        r.border_min_y, r.border_max_y = (h - y1 + 0.25) / h, (h - y0 + 0.25) / h
    r.filepath = str(png)
    bpy.ops.render.render(write_still=True)
    with av.open(str(png)) as image:
        rgb = next(image.decode(video=0)).to_ndarray(format="rgb24")
    if region is not None and rgb.shape[:2] != (y1 - y0, x1 - x0):
        raise RuntimeError(f"Blender rendered {rgb.shape[1]}x{rgb.shape[0]} for the region {region}")
    return rgb


def _car_regions(scene, camera, cars, size):
    """Pixel rectangles (x0, y0, x1, y1) covering each car and its shadow in the flat camera's view.

    A car's box and the prism its shadow sweeps down to the ground are convex, so their picture lies
    inside the bounding rectangle of their projected corners, once the part behind the lens is cut off
    (where the hull crosses the near plane, the segments between corners in front and behind do too)."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    width, height = size
    near = camera.data.clip_start
    depsgraph = scene.view_layers[0].depsgraph
    sun = next(obj for obj in scene.objects if obj.type == "LIGHT").evaluated_get(depsgraph)
    travel = sun.matrix_world.to_3x3() @ Vector((0.0, 0.0, -1.0))  # the sunlight's direction, downwards
    regions = []
    for car in cars:
        matrix = car.evaluated_get(depsgraph).matrix_world
        corners = [matrix @ Vector(c) for c in car.bound_box]
        corners += [c - travel * (c.z / travel.z) for c in corners]  # the shadow's corners at z = 0
        depth = [world_to_camera_view(scene, camera, c).z for c in corners]
        front = [c for c, d in zip(corners, depth) if d > near]
        if not front:
            continue
        crossings = [a + (b - a) * ((da - near) / (da - db))
                     for a, da in zip(corners, depth) if da > near
                     for b, db in zip(corners, depth) if db <= near]
        projected = [world_to_camera_view(scene, camera, c) for c in front + crossings]
        xs = [p.x * width for p in projected]
        ys = [(1.0 - p.y) * height for p in projected]
        x0 = max(0, math.floor(min(xs)) - REGION_PAD_PX)
        y0 = max(0, math.floor(min(ys)) - REGION_PAD_PX)
        x1 = min(width, math.ceil(max(xs)) + REGION_PAD_PX)
        y1 = min(height, math.ceil(max(ys)) + REGION_PAD_PX)
        if x0 < x1 and y0 < y1:
            regions.append((x0, y0, x1, y1))
    return regions


# --- command line ----------------------------------------------------------------------------------

def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"{text}: width and height must be positive and even")
    return w, h


def main(argv=None) -> int:
    defaults = CityParams()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--flat-size", type=_size, default=defaults.flat_size, help="default 1280x536")
    p.add_argument("--pano-size", type=_size, default=defaults.pano_size, help="default 1920x960")
    p.add_argument("--frames", type=int, default=defaults.frames)
    p.add_argument("--pano-frames", type=int, default=defaults.pano_frames)
    p.add_argument("--fps", type=int, default=defaults.fps)
    p.add_argument("--hfov", type=float, default=defaults.hfov_deg, help="horizontal FOV in degrees")
    p.add_argument("--yaw", type=float, default=defaults.yaw_deg, help="degrees, > 0 turns right")
    p.add_argument("--pitch", type=float, default=defaults.pitch_deg, help="degrees, > 0 tilts up")
    p.add_argument("--roll", type=float, default=defaults.roll_deg, help="degrees, > 0 counter-clockwise")
    p.add_argument("--samples", type=int, default=defaults.samples, help="anti-aliasing samples per pixel")
    a = p.parse_args(argv)
    params = CityParams(flat_size=a.flat_size, pano_size=a.pano_size, frames=a.frames, pano_frames=a.pano_frames,
                        fps=a.fps, hfov_deg=a.hfov, yaw_deg=a.yaw, pitch_deg=a.pitch, roll_deg=a.roll,
                        samples=a.samples)
    try:
        make_city(a.out_dir, params)
    except (ValueError, Equi360Error) as err:
        p.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
