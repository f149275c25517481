# SPDX-License-Identifier: GPL-3.0-or-later
"""``equi360.submit_to_flamenco`` in real Blender (the ``bpy`` wheel, headless) against the manager stub on
loopback: the selected strips' job folders are built on the farm's storage and submitted as one job; a
refusal (online access off, no job type, the manager refusing the job) leaves no job folders behind. And
the job type script ships in the extension's zip."""

import json
import os
import subprocess
import sys
import zipfile

from test_addon import blender, bpy_python, clip  # noqa: F401  (fixtures)
from test_extension import blender_ext
from test_flamenco import manager  # noqa: F401  (fixture)

from conftest import ROOT

SETUP = """
prefs.flamenco_manager_url = {url!r}
prefs.farm_job_root = {farm!r}
bpy.context.preferences.system.use_online_access = True
add_camera()
for frame, name in ((1, "city"), (40, "harbour")):
    add_strip({clip!r}, frame_start=frame, channel=1).name = name
for strip in all_strips():
    strip.select = True

def submit():
    try:
        return sorted(bpy.ops.equi360.submit_to_flamenco()), ""
    except RuntimeError as err:  # reports of level ERROR raise from bpy.ops in background mode
        return ["CANCELLED"], str(err)
"""


def in_blender(tmp_path, bpy_python, manager, clip, body: str) -> dict:  # noqa: F811
    """Blender with two selected movie strips, the stub as the manager and tmp_path/farm as the farm's
    storage, then ``body``."""
    setup = SETUP.format(url=manager.url, farm=str(tmp_path / "farm"), clip=str(clip))
    return blender(tmp_path, bpy_python=bpy_python, body=setup + body)


def test_the_selected_strips_go_to_the_farm_as_one_job(tmp_path, clip, manager, bpy_python):  # noqa: F811
    farm = tmp_path / "farm"
    farm.mkdir()
    result = in_blender(tmp_path, bpy_python, manager, clip, """
status, message = submit()
report(status=status, message=message, job_dir=scene.equi360.job_dir, text=scene.equi360.status,
       output_dir=prefs.output_dir)
""")
    assert result["status"] == ["FINISHED"], result["message"]
    assert result["output_dir"] == str(tmp_path / "jobs") and not (tmp_path / "jobs").exists()
    body = manager.requests[-1]["body"]
    assert manager.requests[-1]["path"] == "/api/v3/jobs" and body["type"] == "equi360"
    assert body["settings"]["job_root"] == str(farm)
    shots = body["settings"]["shots"].split("\n")
    assert [s.split("_")[0] for s in shots] == ["city", "harbour"] and sorted(os.listdir(farm)) == sorted(shots)
    for shot in shots:  # the clip goes along: the worker builds the reference (the job's first stage)
        assert set(os.listdir(farm / shot)) == {"job.json", "source.mp4"}
        job = json.loads((farm / shot / "job.json").read_text())
        assert job["source"]["path"] == "source.mp4" and job["reference"] == "reference.mkv"
    assert [t["commands"][0]["parameters"]["args"][-1] for t in manager.compiled["tasks"]] == \
        [f"{farm}/{shot}" for shot in shots]
    assert result["job_dir"] == str(farm / shots[-1])
    assert result["text"] == "Flamenco job 2f7c3b7e-0000-4000-8000-000000000001: 2 shot(s) queued"


def test_a_refused_submission_leaves_no_job_folders(tmp_path, clip, manager, bpy_python):  # noqa: F811
    farm = tmp_path / "farm"
    farm.mkdir()
    manager.routes[("POST", "/api/v3/jobs")] = (500, {"code": 500, "message": "error persisting job in database"})
    result = in_blender(tmp_path, bpy_python, manager, clip, """
outcomes = {}
bpy.context.preferences.system.use_online_access = False
outcomes["offline"] = submit()
bpy.context.preferences.system.use_online_access = True
prefs.farm_job_root = prefs.farm_job_root + "/not-mounted"
outcomes["no_root"] = submit()
prefs.farm_job_root = prefs.farm_job_root.rsplit("/", 1)[0]
outcomes["refused"] = submit()
report(outcomes=outcomes, job_dir=scene.equi360.job_dir, output_dir=prefs.output_dir)
""")
    outcomes = result["outcomes"]
    assert all(status == ["CANCELLED"] for status, _ in outcomes.values()), outcomes
    assert "online access is off" in outcomes["offline"][1]
    assert "does not exist: is the shared storage mounted?" in outcomes["no_root"][1]
    assert "refused POST /api/v3/jobs (HTTP 500): error persisting job in database" in outcomes["refused"][1]
    assert [r["method"] for r in manager.requests] == ["GET", "GET", "POST"]  # only the last one got that far
    assert os.listdir(farm) == [] and result["job_dir"] == "" and result["output_dir"] == str(tmp_path / "jobs")


def test_the_job_type_script_ships_in_the_extension(tmp_path):
    out = tmp_path / "dist"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(blender_ext()), "build", "--source-dir", str(ROOT), "--output-dir",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = out.glob("equi360-*.zip")
    names = zipfile.ZipFile(zip_path).namelist()
    assert "blender_equi360/farm/equi360.js" in names and "blender_equi360/farm/flamenco.py" in names
    assert "operators/farm.py" in names
