"""The add-on in real Blender (the ``bpy`` wheel, headless): registered from an extensions repository as
Blender does it, operators run in background mode on a clip the tests make, with the real engine's draft
backend and with fake engines. Each test is a fresh Blender process."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT, smooth_texture, write_clip

PRELUDE = """
import json, math, os, sys
os.environ["BLENDER_USER_RESOURCES"] = {user!r}
import bpy, addon_utils
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.context.preferences.extensions.repos.new(name="test_repo", module="test_repo", custom_directory={repo!r},
                                            source="USER")
addon_utils.enable("bl_ext.test_repo.equi360", default_set=True, handle_error=None)
prefs = bpy.context.preferences.addons["bl_ext.test_repo.equi360"].preferences
prefs.engine_python = {python!r}
prefs.backend = "draft"
prefs.delivery_size = "1920x960"
prefs.canvas = "1920x960"
prefs.output_dir = {jobs!r}
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y = 1912, 800
scene.render.fps = 24

def add_camera(heading=30.0, pitch=5.0, roll=0.0, lens_hfov=100.0, kind="PERSP"):
    data = bpy.data.cameras.new("Cam")
    data.type = kind
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    data.lens = 18.0 / math.tan(math.radians(lens_hfov) / 2)
    obj = bpy.data.objects.new("Cam", data)
    scene.collection.objects.link(obj)
    # Blender cameras look down local -Z: Euler (90°, 0, -90°) looks along +X. Then roll about the view
    # axis, pitch up (about world Y), heading from +X towards +Y (about world Z).
    from mathutils import Euler, Matrix
    rotation = (Matrix.Rotation(math.radians(heading), 3, "Z") @ Matrix.Rotation(math.radians(-pitch), 3, "Y")
                @ Euler((math.radians(90), 0.0, math.radians(-90)), "XYZ").to_matrix()
                @ Matrix.Rotation(math.radians(roll), 3, "Z"))
    obj.matrix_world = Matrix.Translation((1.0, 2.0, 1.5)) @ rotation.to_4x4()
    scene.camera = obj
    return obj

def strip_collection():  # strips (4.4+), sequences in 4.2
    editor = scene.sequence_editor_create()
    return editor.strips if hasattr(editor, "strips") else editor.sequences
def all_strips():
    editor = scene.sequence_editor
    return list(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all) if editor else []
def add_strip(path, frame_start=10, channel=2):
    editor = scene.sequence_editor_create()
    strip = strip_collection().new_movie(name="plate", filepath=path, channel=channel, frame_start=frame_start)
    editor.active_strip = strip
    return strip

def add_color_strip():
    editor = scene.sequence_editor_create()
    span = {{"length": 10}} if bpy.app.version >= (5, 0, 0) else {{"frame_end": 11}}  # renamed in 5.0
    editor.active_strip = strip_collection().new_effect(name="color", type="COLOR", channel=1, frame_start=1, **span)

def counts():
    return {{"images": len(bpy.data.images), "worlds": len(bpy.data.worlds), "objects": len(bpy.data.objects),
            "strips": len(all_strips())}}

def report(**values):
    print("RESULT " + json.dumps(values), flush=True)
"""


LTS_PYTHONS = {"4.5": ROOT / ".venv-lts" / "bin" / "python",     # bpy 4.5 LTS (make test installs both)
               "4.2": ROOT / ".venv-lts42" / "bin" / "python"}  # bpy 4.2 LTS, the oldest Blender supported


@pytest.fixture(params=["5.0", "4.5", "4.2"])
def bpy_python(request):
    """The Python whose ``bpy`` is the Blender under test: 5.0 (this one), 4.5 LTS or 4.2 LTS."""
    if request.param == "5.0":
        return sys.executable
    python = LTS_PYTHONS[request.param]
    if not python.exists():
        pytest.skip(f"{python.parents[1].name} (bpy {request.param} LTS) is not installed: run make test")
    return str(python)


CLIP_FRAMES = 10  # every frame is converted at 1920×960: each one costs about a second


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return write_clip(folder / "plate.mp4", CLIP_FRAMES, 478, 200, 24, lambda k: smooth_texture(478, 200, k / 6))


def blender(tmp_path, body: str, bpy_python=sys.executable, timeout=300) -> dict:
    repo = tmp_path / "repo"
    if not repo.exists():
        repo.mkdir()
        (repo / "equi360").symlink_to(ROOT, target_is_directory=True)
    script = PRELUDE.format(user=str(tmp_path / "user"), repo=str(repo), python=sys.executable,
                            jobs=str(tmp_path / "jobs")) + textwrap.dedent(body)
    proc = subprocess.run([bpy_python, "-c", script], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results[-1]


@pytest.mark.parametrize("bpy_python", ["5.0", "4.2"], indirect=True)  # the newest and the oldest Blender
def test_convert_with_the_draft_engine_loads_world_camera_and_strip(tmp_path, clip, bpy_python):
    result = blender(tmp_path, bpy_python=bpy_python, body=f"""
        prefs.suffix_360, prefs.passes = True, "exr"
        add_camera(heading=30.0, pitch=5.0)
        add_strip({str(clip)!r})
        status = bpy.ops.equi360.convert()
        state = scene.equi360
        tree = scene.world.node_tree
        env = next(n for n in tree.nodes if n.type == "TEX_ENVIRONMENT")
        mapping = next(n for n in tree.nodes if n.type == "MAPPING")
        preview = bpy.data.objects["Equi360 Preview"]
        strips = sorted((s.channel, s.frame_final_start, s.name, s.filepath, s.frame_final_duration)
                        for s in all_strips())
        values = dict(status=sorted(status), job_dir=state.job_dir, heading=state.heading_deg,
                      image=env.image.filepath, source=env.image.source, frame_start=env.image_user.frame_start,
                      rotation=list(mapping.inputs["Rotation"].default_value),
                      pano=[preview.data.type, preview.data.panorama_type], preview_location=list(preview.location),
                      strips=strips, status_text=state.status)
        # The compositing passes, as the world and as a strip; the preview sheet in an image.
        passes = os.path.join(state.job_dir, "result_passes")
        bpy.ops.equi360.load_world(filepath=passes)
        env = next(n for n in scene.world.node_tree.nodes if n.type == "TEX_ENVIRONMENT")
        bpy.ops.equi360.add_strip(filepath=passes)
        image_strip = next(s for s in all_strips() if s.type == "IMAGE")
        scene.frame_current = 20
        sheet = bpy.ops.equi360.show_preview()
        sheets = [i for i in bpy.data.images if i.filepath.endswith("_preview.png")]
        report(**values, pass_source=env.image.source, pass_duration=env.image_user.frame_duration,
               pass_strip=[image_strip.channel, image_strip.frame_final_duration, len(image_strip.elements)],
               sheet=sorted(sheet), sheet_size=list(sheets[0].size))
    """)
    assert result["status"] == ["FINISHED"]
    job = json.loads(open(os.path.join(result["job_dir"], "job.json")).read())
    assert job["backend"] == "draft" and job["reference"] == "reference.mkv"
    # The preferences' recipe: the LoRA 1.0 author's by default, on the canvas the reference was built at.
    assert (job["preset"], job["sampler"], job["checkpoint_variant"], job["canvas"]) == ("fast", "auto", "auto",
                                                                                         "1920x960")
    video = os.path.join(result["job_dir"], "result_360.mp4")
    assert result["image"] == video and result["source"] == "MOVIE" and result["frame_start"] == 10
    assert result["heading"] == pytest.approx(30.0, abs=1e-3)
    assert result["rotation"][2] == pytest.approx(-math.radians(30.0), abs=1e-5)
    assert result["pano"] == ["PANO", "EQUIRECTANGULAR"] and result["preview_location"] == pytest.approx([1, 2, 1.5])
    assert result["strips"][0][:2] == (2, 10) or result["strips"][0][:2] == [2, 10]
    assert result["strips"][1][:2] in ([3, 10], (3, 10)) and result["strips"][1][3] == video
    assert result["strips"][1][4] == result["strips"][0][4] == CLIP_FRAMES  # as long as the source strip
    assert result["status_text"].startswith("DRAFT done")
    from blender_equi360.media.mp4_spherical import read_spherical
    assert read_spherical(video).projection == "equirectangular"  # the delivery is marked 360° by default
    assert result["pass_source"] == "SEQUENCE" and result["pass_duration"] == CLIP_FRAMES
    assert result["pass_strip"] == [4, CLIP_FRAMES, CLIP_FRAMES]
    assert result["sheet"] == ["FINISHED"] and result["sheet_size"][0] > 0


def test_the_reference_world_puts_the_plate_where_the_camera_sees_it(tmp_path, clip, bpy_python):
    """Render through the scene camera with the reference as the world: the picture is the plate."""
    result = blender(tmp_path, bpy_python=bpy_python, body=f"""
        import numpy as np
        add_camera(heading=30.0, pitch=8.0, roll=4.0)
        add_strip({str(clip)!r}, frame_start=1, channel=1)
        assert bpy.ops.equi360.build_reference() == {{"FINISHED"}}
        scene.render.engine = "CYCLES"
        scene.cycles.device = "CPU"
        scene.cycles.samples = 4
        scene.cycles.use_denoising = False
        scene.world.cycles.sampling_method = "NONE"
        scene.view_settings.view_transform = "Standard"
        scene.render.use_sequencer = False
        scene.render.resolution_x, scene.render.resolution_y = 239, 100
        scene.render.filepath = {str(tmp_path / "view.png")!r}
        scene.frame_set(1)
        bpy.ops.render.render(write_still=True)
        report(ok=True)
    """)
    import av
    import numpy as np

    from blender_equi360.quality.metrics import mean_abs_error
    rendered = np.asarray(av.open(str(tmp_path / "view.png")).decode(video=0).__next__().to_ndarray(format="rgb24"))
    with av.open(str(clip)) as container:
        first = next(container.decode(video=0)).to_image().resize((239, 100))
    plate = np.asarray(first)
    inner = (slice(10, -10), slice(10, -10))
    error = mean_abs_error(rendered[inner], plate[inner])
    mirrored = mean_abs_error(rendered[inner], plate[:, ::-1][inner])
    assert result["ok"] and error < 12 and error < mirrored / 2, (error, mirrored)


@pytest.mark.parametrize("setup, words", [
    ("add_camera()", "no active strip"),
    ("add_camera(); add_color_strip()", "select a movie strip"),
    ("add_camera(); s = add_strip(CLIP); s.filepath = '/no/such/clip.mp4'", "missing"),
    ("add_strip(CLIP)", "no camera"),
    ("add_camera(kind='ORTHO'); add_strip(CLIP)", "perspective camera"),
    ("add_camera(kind='PANO'); add_strip(CLIP)", "perspective camera"),
    ("add_camera(); add_strip(CLIP); prefs.engine_python = ''", "not configured"),
])
def test_bad_input_is_a_report_and_leaves_nothing_behind(tmp_path, clip, setup, words, bpy_python):
    result = blender(tmp_path, bpy_python=bpy_python, body=f"""
        CLIP = {str(clip)!r}
        {setup}
        before = counts()
        try:
            status = sorted(bpy.ops.equi360.convert())
            message = ""
        except RuntimeError as err:  # reports of level ERROR raise from bpy.ops in background mode
            status, message = ["CANCELLED"], str(err)
        jobs = os.listdir({str(tmp_path / "jobs")!r}) if os.path.isdir({str(tmp_path / "jobs")!r}) else []
        report(status=status, message=message, before=before, after=counts(), jobs=jobs)
    """)
    assert result["status"] == ["CANCELLED"] and words in result["message"], result["message"]
    assert result["after"] == result["before"] and result["jobs"] == []


def test_a_camera_that_turns_over_the_strip_is_read_at_the_strips_first_frame_with_a_warning(tmp_path, clip):
    """Wherever the playhead is: the pose at the strip's first frame, and a warning that says so."""
    result = blender(tmp_path, body=f"""
        cam = add_camera(heading=0.0, pitch=0.0)
        add_strip({str(clip)!r}, frame_start=1)
        from mathutils import Matrix
        base = cam.matrix_world.copy()
        for frame, heading in ((1, 0.0), (10, 90.0)):
            cam.matrix_world = Matrix.Rotation(math.radians(heading), 4, "Z") @ base
            cam.keyframe_insert("rotation_euler", frame=frame)
        scene.frame_set(6)
        from bl_ext.test_repo.equi360.operators import scene_read
        from bl_ext.test_repo.equi360.blender_equi360 import ReferenceSettings
        source = scene_read.read_strip(scene, scene.sequence_editor.active_strip)
        pose, warnings = scene_read.read_camera(scene, source, ReferenceSettings())
        still = bpy.data.objects.new("Still", cam.data.copy())
        scene.collection.objects.link(still)
        still.matrix_world = base
        scene.camera = still
        _, still_warnings = scene_read.read_camera(scene, source, ReferenceSettings())
        report(heading=pose.heading_deg, warnings=warnings, still_warnings=still_warnings, playhead=scene.frame_current)
    """)
    assert result["heading"] == pytest.approx(0.0, abs=0.01) and result["playhead"] == 6
    assert any("moves over the strip" in w and "frame 1" in w for w in result["warnings"]), result["warnings"]
    assert not any("moves" in w for w in result["still_warnings"])


def test_blender_and_the_core_see_a_portrait_phone_clip_the_same_way(tmp_path):
    """Stored sideways with a 90° display matrix: Blender shows it upright, and so does the core."""
    from test_video_input import write_lossless

    from blender_equi360.media.video import probe
    frames = [np.rot90(smooth_texture(144, 256, k), -1) for k in range(3)]
    phone = write_lossless(tmp_path / "phone.mp4", frames, rotation=90)
    result = blender(tmp_path, body=f"""
        add_camera()
        add_strip({str(phone)!r})
        from bl_ext.test_repo.equi360.operators import scene_read
        source = scene_read.read_strip(scene, scene.sequence_editor.active_strip)
        report(size=[source.width, source.height])
    """)
    info = probe(phone)
    assert result["size"] == [info.width, info.height] == [144, 256]


def test_an_engine_error_or_crash_is_reported_with_its_code(tmp_path, clip, bpy_python):
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\necho '{\"event\": \"progress\", \"stage\": \"denoise\", \"step\": 1, \"total\": 30, "
                    "\"eta_s\": 60}'\necho '{\"event\": \"error\", \"code\": \"cuda_oom\", \"message\": \"CUDA ran "
                    "out of memory while denoise: turn on low VRAM\"}'\nexit 12\n")
    fake.chmod(0o755)
    crash = tmp_path / "crash_python"
    crash.write_text("#!/bin/sh\necho 'Segmentation fault' >&2\nexit 139\n")
    crash.chmod(0o755)
    result = blender(tmp_path, bpy_python=bpy_python, body=f"""
        add_camera(); add_strip({str(clip)!r})
        messages = []
        for python in ({str(fake)!r}, {str(crash)!r}):
            prefs.engine_python = python
            before = counts()
            try:
                bpy.ops.equi360.convert()
            except RuntimeError as err:
                messages.append(str(err))
            messages.append(counts() == before)
        report(messages=messages, running=scene.equi360.running)
    """)
    oom, same1, crashed, same2 = result["messages"]
    assert "[cuda_oom]" in oom and "low VRAM" in oom and same1
    assert "[crashed]" in crashed and "status 139" in crashed and "Segmentation fault" in crashed and same2
    assert result["running"] is False


def test_check_engine_and_the_standalone_operators(tmp_path, clip, bpy_python):
    """Check Engine fills the preferences' report; load_world plays any equirect video from the given
    frame; add_strip finds the first free channel; the preview camera is panoramic at the camera."""
    video = write_clip(tmp_path / "pano.mp4", 12, 256, 128, 24, lambda k: smooth_texture(256, 128, k))
    result = blender(tmp_path, bpy_python=bpy_python, body=f"""
        add_camera()
        add_strip({str(clip)!r}, frame_start=5, channel=1)
        strip_collection().new_movie(name="busy", filepath={str(clip)!r}, channel=2, frame_start=1)
        assert bpy.ops.equi360.check_engine() == {{"FINISHED"}}
        state = scene.equi360
        state.source_channel, state.source_start, state.heading_deg = 1, 5, -45.0
        assert bpy.ops.equi360.load_world(filepath={str(video)!r}) == {{"FINISHED"}}
        assert bpy.ops.equi360.load_world(filepath={str(video)!r}) == {{"FINISHED"}}  # again: replaces, no pile-up
        assert bpy.ops.equi360.add_strip(filepath={str(video)!r}) == {{"FINISHED"}}
        assert bpy.ops.equi360.add_preview_camera() == {{"FINISHED"}}
        scene.render.engine = "BLENDER_EEVEE" if bpy.app.version >= (5, 0, 0) else "BLENDER_EEVEE_NEXT"
        if hasattr(scene.render.image_settings, "media_type"):  # 5.0 chooses the media type first
            scene.render.image_settings.media_type = "VIDEO"
        scene.render.image_settings.file_format = "FFMPEG"
        tree = scene.world.node_tree
        env = [n for n in tree.nodes if n.type == "TEX_ENVIRONMENT"]
        new = [s for s in all_strips() if s.filepath == {str(video)!r}]
        report(check=prefs.check_report, envs=len(env), images=len(bpy.data.images),
               names=[i.name for i in bpy.data.images],
               frame_start=env[0].image_user.frame_start, frames=env[0].image_user.frame_duration,
               strip=[new[0].channel, new[0].frame_final_start],
               cameras=len([o for o in scene.objects if o.type == "CAMERA"]),
               engine=scene.render.engine, file_format=scene.render.image_settings.file_format)
    """)
    assert "GPU:" in result["check"] and "Missing:" in result["check"]
    assert result["envs"] == 1 and result["images"] == 1, result["names"]
    assert result["frames"] == 12 and result["frame_start"] == 5
    assert result["strip"] == [3, 5] and result["cameras"] == 2
    assert result["engine"].startswith("BLENDER_EEVEE") and result["file_format"] == "FFMPEG"


def test_convert_queues_the_selected_strips(tmp_path, clip):  # the queue is ours: the newest Blender is enough
    result = blender(tmp_path, body=f"""
        add_camera()
        first = add_strip({str(clip)!r}, frame_start=1, channel=1)
        second = add_strip({str(clip)!r}, frame_start=40, channel=1)
        for strip in all_strips():
            strip.select = True
        status = bpy.ops.equi360.convert()
        strips = sorted((s.channel, s.frame_final_start, os.path.basename(os.path.dirname(s.filepath)))
                        for s in all_strips())
        report(status=sorted(status), strips=strips, jobs=sorted(os.listdir({str(tmp_path / "jobs")!r})))
    """)
    assert result["status"] == ["FINISHED"] and len(result["jobs"]) == 2
    results = [s for s in result["strips"] if s[0] == 2]
    assert [s[1] for s in results] == [1, 40] and len({s[2] for s in results}) == 2


def test_a_long_strip_is_converted_whole_at_its_own_frame_rate(tmp_path):
    """33 frames at 30 fps, windows of 25: the result has the strip's frames and rate, made in 2 windows;
    converting again after a kill continues the same job."""
    long_clip = write_clip(tmp_path / "long.mp4", 33, 478, 200, 30, lambda k: smooth_texture(478, 200, k / 9))
    convert = f"""
        scene.render.fps = 30
        prefs.window_frames, prefs.window_overlap = 25, 9
        add_camera()
        add_strip({str(long_clip)!r})
        status = bpy.ops.equi360.convert()
        strips = sorted((s.channel, s.frame_final_duration) for s in all_strips())
        report(status=sorted(status), job_dir=scene.equi360.job_dir, strips=strips)
    """
    result = blender(tmp_path, body=convert)
    assert result["status"] == ["FINISHED"]
    job_dir = result["job_dir"]
    job = json.loads(open(os.path.join(job_dir, "job.json")).read())
    assert (job["output_frames"], job["window_frames"], job["window_overlap"]) == (33, 25, 9)
    windows = json.loads(open(os.path.join(job_dir, "windows.json")).read())["windows"]
    assert [w["state"] for w in windows] == ["done"] * 2
    from blender_equi360.media.video import probe
    info = probe(os.path.join(job_dir, "result.mp4"))
    assert (info.frame_count, info.fps) == (33, 30)
    assert [list(s) for s in result["strips"]] == [[2, 33], [3, 33]]

    # Blender killed while the engine made the last window: converting the strip again continues that job.
    manifest_path = os.path.join(job_dir, "windows.json")
    manifest = json.loads(open(manifest_path).read())
    manifest["windows"][-1]["state"] = "pending"
    open(manifest_path, "w").write(json.dumps(manifest))
    os.remove(os.path.join(job_dir, "result.mp4"))
    kept = {name: os.stat(os.path.join(job_dir, "windows", name)).st_mtime_ns for name in ("window_0000.mkv",)}
    again = blender(tmp_path, body=convert)
    assert again["status"] == ["FINISHED"] and again["job_dir"] == job_dir
    assert {name: os.stat(os.path.join(job_dir, "windows", name)).st_mtime_ns for name in kept} == kept
    assert probe(os.path.join(job_dir, "result.mp4")).frame_count == 33


def test_blender_never_waits_while_a_20_second_strip_converts(tmp_path):
    """What the modal Convert runs on Blender's main thread — preparing the job, then one engine poll and its
    events per timer tick — measured while a 20-second strip (480 frames) has its reference built and its
    first window made by the engine, then cancelled: no single stretch may reach 0.2 s."""
    long_clip = write_clip(tmp_path / "twenty.mp4", 480, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 30))
    result = blender(tmp_path, timeout=600, body=f"""
        import time
        from bl_ext.test_repo.equi360.operators.job_setup import prepare_job
        from bl_ext.test_repo.equi360.operators.preferences import ADDON_ROOT
        from bl_ext.test_repo.equi360.blender_equi360.jobs.engine_process import EngineProcess

        class Reports:
            def report(self, kind, message):
                print("report", kind, message)
        add_camera()
        strip = add_strip({str(long_clip)!r})
        started = time.perf_counter()
        job_dir = prepare_job(bpy.context, Reports(), strip)
        stretches = [("prepare", time.perf_counter() - started)]
        process = EngineProcess(prefs.engine_python, job_dir, cwd=ADDON_ROOT, env=dict(os.environ))
        stages, ticks = [], 0
        while not process.finished:
            started = time.perf_counter()
            for event in process.poll():
                if event["event"] == "progress":
                    stages.append(event["stage"])
                    state = scene.equi360
                    state.progress, state.status = event["step"] / max(event["total"], 1), event["stage"]
                    if event["stage"] not in ("reference",) and "cancel" not in stages:
                        process.ask_to_stop()  # what Esc does in the modal operator
                        stages.append("cancel")
            stretches.append(("tick", time.perf_counter() - started))
            ticks += 1
            time.sleep(0.1)  # the modal operator's timer
        report(stretches=stretches, ticks=ticks, stages=sorted(set(stages)), final=process.final_event)
    """)
    assert "reference" in result["stages"] and "cancel" in result["stages"], result["stages"]
    assert result["final"]["code"] == "cancelled" and result["ticks"] > 20
    longest = max(seconds for _, seconds in result["stretches"])
    assert longest <= 0.2, sorted(result["stretches"], key=lambda s: -s[1])[:5]
    print("longest main-thread stretch", round(longest, 4), "s over", result["ticks"], "ticks")
