"""The engine builds the reference itself (stage ``reference``) when the job gives its source: progress and
cancel like every stage, nothing half-written, not built twice, and a reference-only job for the add-on's
placement check."""

import json
import subprocess
import sys

import pytest

from blender_equi360.jobs.job import Job, SourceSpec, save_job
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from blender_equi360.media.video import probe
from conftest import ROOT, run_engine, smooth_texture, write_clip

CANVAS = "512x256"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    return write_clip(folder / "clip.mp4", 40, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 5))


def source_job(folder, clip, **fields) -> Job:
    folder.mkdir(parents=True, exist_ok=True)
    source = SourceSpec(str(clip), start_s=0.25, frames=25, hfov_deg=95.0, pitch_deg=3.0, size=CANVAS)
    job = Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft", delivery_size="512x256",
                          source=source, **fields)
    save_job(folder, job)
    return job


def stages(events) -> list:
    return list(dict.fromkeys(e["stage"] for e in events if e["event"] == "progress"))


def test_the_engine_builds_the_reference_first_then_makes_the_clip(tmp_path, clip):
    source_job(tmp_path, clip)
    rc, events, err = run_engine(tmp_path)
    assert rc == 0, err
    assert stages(events)[0] == "reference" and "finish" in stages(events)
    reference = [e for e in events if e["event"] == "progress" and e["stage"] == "reference"]
    assert reference[-1]["step"] == reference[-1]["total"] == 25
    info = probe(tmp_path / "reference.mkv")
    assert (info.width, info.height, info.frame_count) == (512, 256, 25)
    record = json.loads((tmp_path / "reference.json").read_text())
    assert record["settings"]["camera"]["pitch_deg"] == 3.0 and record["settings"]["start_s"] == 0.25
    assert probe(tmp_path / "result.mp4").frame_count == 25

    # Run again: the reference is not built again, the windows are reused.
    before = (tmp_path / "reference.mkv").stat().st_mtime_ns
    rc, events, err = run_engine(tmp_path)
    assert rc == 0, err
    assert "reference" not in stages(events)
    assert (tmp_path / "reference.mkv").stat().st_mtime_ns == before
    assert any("already built" in e["message"] for e in events if e["event"] == "log")


def test_a_changed_source_setting_builds_the_reference_again(tmp_path, clip):
    source_job(tmp_path, clip)
    assert run_engine(tmp_path)[0] == 0
    job = source_job(tmp_path, clip)
    save_job(tmp_path, Job.from_fields(**{**job.to_dict(), "source": {**job.to_dict()["source"], "yaw_deg": 20.0}}))
    rc, events, err = run_engine(tmp_path)
    assert rc == 0, err
    assert stages(events)[0] == "reference"
    assert json.loads((tmp_path / "reference.json").read_text())["settings"]["camera"]["yaw_deg"] == 20.0


def test_a_reference_only_job_stops_after_the_reference(tmp_path, clip):
    source_job(tmp_path, clip, stop_after="reference")
    rc, events, err = run_engine(tmp_path)
    assert rc == 0, err
    done = events[-1]
    assert done["event"] == "done" and done["outputs"] == {"reference": str(tmp_path / "reference.mkv"),
                                                           "mask": str(tmp_path / "mask.mkv")}
    assert stages(events) == ["reference"] and not any(e["event"] == "warning" for e in events)
    assert not (tmp_path / "windows.json").exists() and not (tmp_path / "result.mp4").exists()


def test_cancel_during_the_reference_leaves_no_reference(tmp_path, clip):
    source_job(tmp_path, clip)
    proc = subprocess.Popen([sys.executable, "-m", "engine", "run", str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    for line in proc.stdout:
        events.append(parse_event(line))
        if events[-1]["event"] == "progress" and events[-1]["stage"] == "reference" and events[-1]["step"] == 2:
            proc.stdin.write("cancel\n")
            proc.stdin.flush()
    proc.wait(timeout=60)
    assert proc.returncode == EXIT_CODES["cancelled"] and events[-1]["code"] == "cancelled"
    assert not list(tmp_path.glob("reference*")) and not list(tmp_path.glob("mask*"))


@pytest.mark.parametrize("source, code, words", [
    ({"path": "nowhere.mp4"}, "bad_input", "nowhere.mp4"),
    ({"path": "CLIP", "hfov_deg": 200.0}, "bad_job", "horizontal FOV"),
    ({"path": "CLIP", "frames": 24}, "bad_job", "8k+1"),
    ({"path": "CLIP", "lora_version": "9"}, "bad_job", "lora_version"),
])
def test_a_bad_source_is_a_clear_error_before_any_work(tmp_path, clip, source, code, words):
    data = {"version": 1, "reference": "reference.mkv", "mask": "mask.mkv", "backend": "draft",
            "source": {k: str(clip) if v == "CLIP" else v for k, v in source.items()}}
    (tmp_path / "job.json").write_text(json.dumps(data))
    rc, events, _ = run_engine(tmp_path)
    assert rc == EXIT_CODES[code] and events[-1]["code"] == code and words in events[-1]["message"]
    assert not list(tmp_path.glob("reference*"))
