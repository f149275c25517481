"""``python -m blender_equi360 batch``: jobs run one after the other with the real engine (draft), a failing
job does not stop the others, and a second run skips what is done."""

import subprocess
import sys

from blender_equi360.jobs.job import Job, save_job
from conftest import ROOT, copy_job_inputs


def job(folder, engine_reference, **fields):
    copy_job_inputs(engine_reference, folder)
    save_job(folder, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                     delivery_size="512x256", **fields))
    return folder


def batch(*job_dirs):
    return subprocess.run([sys.executable, "-m", "blender_equi360", "batch", *map(str, job_dirs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_a_batch_runs_every_job_goes_on_after_a_failure_and_resumes(tmp_path, engine_reference):
    first = job(tmp_path / "shot1", engine_reference)
    broken = job(tmp_path / "shot2", engine_reference)
    (broken / "reference.mkv").write_bytes(b"not a video")
    third = job(tmp_path / "shot3", engine_reference, seed=3)
    run = batch(first, broken, third)
    assert run.returncode == 1, run.stdout + run.stderr
    assert (first / "result.mp4").exists() and (third / "result.mp4").exists()
    assert not (broken / "result.mp4").exists()
    assert "FAILED [bad_input]" in run.stdout and "batch: 2 done, 0 skipped, 1 failed" in run.stdout

    again = batch(first, third)
    assert again.returncode == 0 and "batch: 0 done, 2 skipped, 0 failed" in again.stdout
    save_job(third, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                    delivery_size="512x256", seed=4))  # a changed job runs again
    assert "batch: 1 done, 1 skipped, 0 failed" in batch(first, third).stdout


def test_ctrl_c_cancels_the_running_job_and_stops_the_batch(tmp_path, engine_reference):
    import signal
    first, second = job(tmp_path / "shot1", engine_reference), job(tmp_path / "shot2", engine_reference)
    proc = subprocess.Popen([sys.executable, "-m", "blender_equi360", "batch", str(first), str(second)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "draft…" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "cancelled [cancelled]" in out and "cancelled" in out.splitlines()[-1]
    assert not (first / "result.mp4").exists() and not (second / "result.mp4").exists()
    assert "shot2" not in out
