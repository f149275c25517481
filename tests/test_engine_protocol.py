"""The engine as the add-on drives it: ``job.json`` in, JSON events out, draft backend end to end,
cancellation, and one distinct error code per failure. CPU only, nothing downloaded."""

import json
import signal
import subprocess
import sys

import av
import numpy as np
import pytest

from blender_equi360 import Equi360Error
from blender_equi360.jobs.job import BASE_PROMPT, Job, ModelFiles, load_job, output_path, save_job
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from blender_equi360.media.video import probe, read_frames
from blender_equi360.quality.metrics import mean_abs_error
from conftest import ROOT, copy_job_inputs


@pytest.fixture
def job_dir(tmp_path, engine_reference):
    copy_job_inputs(engine_reference, tmp_path)
    save_job(tmp_path, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                       delivery_size="512x256"))
    return tmp_path


def engine(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "engine", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, **kw)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, [parse_event(line) for line in out.splitlines()], err


def test_draft_job_end_to_end(job_dir, engine_reference):
    rc, events, err = finish(engine("run", job_dir))
    assert rc == 0, err
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and "error" not in kinds
    for stage in ("draft", "finish"):
        progress = [e for e in events if e["event"] == "progress" and e["stage"] == stage]
        assert [e["step"] for e in progress] == list(range(1, 50)) and all(e["total"] == 49 for e in progress)
    done = events[-1]
    assert done["backend"] == "draft" and done["draft"] is True
    result = done["outputs"]["video"]
    assert result == str(job_dir / "result.mp4") and probe(result).frame_count == 49
    with av.open(result) as container:
        assert "DRAFT" in container.metadata.get("title", "")
    frames, refs = list(read_frames(result)), list(read_frames(job_dir / "reference.mkv"))
    mask = next(read_frames(job_dir / "mask.mkv", "gray"))
    assert len(frames) == 49
    # The plate comes back (up to the playback encode); everything else is filled, with no seam.
    assert mean_abs_error(frames[10], refs[10], where=mask == 0) < 3.0
    assert frames[10][mask == 255].mean() > 40
    seam = np.abs(frames[10][:, 0].astype(float) - frames[10][:, -1]).mean()
    inner = np.abs(np.diff(frames[10].astype(float), axis=1)).mean()
    assert seam <= 2 * inner + 1
    assert (job_dir / "engine.log").read_text().strip()
    assert sorted(p.name for p in job_dir.iterdir()) == ["engine.log", "job.json", "job.lock", "mask.mkv",
                                                          "reference.json", "reference.mkv", "result.mp4", "windows",
                                                          "windows.json"]
    assert [p.name for p in (job_dir / "windows").iterdir()] == ["window_0000.mkv"]


@pytest.mark.parametrize("how", ["stdin", "sigint"])
def test_cancel_stops_with_its_own_code_and_writes_nothing(job_dir, how):
    proc = engine("run", job_dir)
    for line in proc.stdout:
        if parse_event(line)["event"] == "progress":
            break
    if how == "stdin":
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
    else:
        proc.send_signal(signal.SIGINT)
    rc, events, err = finish(proc)
    assert rc == EXIT_CODES["cancelled"], err
    assert events[-1]["event"] == "error" and events[-1]["code"] == "cancelled"
    assert not (job_dir / "result.mp4").exists()
    assert not [p for p in job_dir.iterdir() if "partial" in p.name]


@pytest.mark.parametrize("case,code", [
    ("not_json", "bad_job"), ("unknown_field", "bad_job"), ("no_folder", "bad_job"),
    ("outside", "bad_job"), ("missing_reference", "bad_input"), ("ltx_without_cuda", "no_cuda"),
])
def test_every_failure_has_its_code_and_exit_status(job_dir, case, code):
    target = job_dir
    if case == "not_json":
        (job_dir / "job.json").write_text("{ not json")
    elif case == "unknown_field":
        (job_dir / "job.json").write_text(json.dumps({"reference": "reference.mkv", "mask": "mask.mkv", "sead": 1}))
    elif case == "no_folder":
        target = job_dir / "nope"
    elif case == "outside":
        save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", output="../escape.mp4",
                                          backend="draft"))
    elif case == "missing_reference":
        save_job(job_dir, Job.from_fields(reference="gone.mkv", mask="mask.mkv", backend="draft"))
    elif case == "ltx_without_cuda":
        save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="ltx"))
    rc, events, err = finish(engine("run", target), timeout=60)
    assert rc == EXIT_CODES[code], err
    assert events[-1] == {"event": "error", "code": code, "message": events[-1]["message"]}
    assert "\n" not in events[-1]["message"] and len(events[-1]["message"]) > 10
    assert not (job_dir / "result.mp4").exists() and not (job_dir.parent / "escape.mp4").exists()


def test_the_delivery_keeps_the_span_asked_for(job_dir):
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      delivery_size="512x256", output_frames=20))
    rc, events, err = finish(engine("run", job_dir))
    assert rc == 0, err
    assert probe(job_dir / "result.mp4").frame_count == 20


def test_auto_falls_back_to_the_draft_with_a_warning(job_dir):
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="auto",
                                      delivery_size="512x256"))
    rc, events, err = finish(engine("run", job_dir))
    assert rc == 0, err
    warnings = [e for e in events if e["event"] == "warning"]
    assert warnings and warnings[0]["code"] == "draft_fallback" and "DRAFT" in warnings[0]["message"]
    assert events[-1]["draft"] is True


def test_check_reports_what_is_missing(job_dir):
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv",
                          models=ModelFiles(checkpoint="ltx-2.3-22b-dev.safetensors")))
    plain = subprocess.run([sys.executable, "-m", "engine", "check"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 0 and json.loads(plain.stdout)["gpu"]["cuda"] is False
    out = subprocess.run([sys.executable, "-m", "engine", "check", str(job_dir)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["packages"]["diffusers"] == "0.42.1"
    entry = report["models"]["checkpoint"]
    assert entry["configured"] and not entry["present"] and not entry["ok"] and entry["code"] == "missing_weights"
    assert entry["path"] == str(job_dir / "ltx-2.3-22b-dev.safetensors")
    assert "model:checkpoint" in report["missing"] and report["ready_for_ltx"] is False


def test_job_json_round_trips_and_rejects_bad_fields(tmp_path):
    job = Job.from_fields(reference="r.mkv", mask="m.mkv", preset="fast", seed=7, prompt="city at dusk",
              models=ModelFiles(checkpoint="/models/ltx.safetensors"))
    save_job(tmp_path, job)
    assert load_job(tmp_path) == job and job.full_prompt == f"{BASE_PROMPT}, city at dusk"
    for bad, message in (({"reference": "r", "mask": "m", "preset": "turbo"}, "preset"),
                         ({"reference": "r"}, "missing field"),
                         ({"reference": "r", "mask": "m", "version": 2}, "version"),
                         ({"reference": "r", "mask": "m", "models": {"vae": "x"}}, "unknown model"),
                         ({"reference": "r", "mask": "m", "steps": 0}, "steps")):
        with pytest.raises(Equi360Error, match=message):
            Job.from_dict(bad)
    with pytest.raises(Equi360Error, match="inside the job folder"):
        output_path(tmp_path, Job.from_fields(reference="r", mask="m", output="/tmp/x.mp4"))
