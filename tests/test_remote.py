"""The engine on another machine over SSH (``blender_equi360/jobs/remote.py``), against a real SSH server on the
loopback interface (asyncssh's, ``tests/ssh_server.py``) and the system's OpenSSH client: throwaway keys, real
commands, a real engine on the other side. A draft job through it (with passes; a reference-only job; a job whose
reference is made), its span cut from the clip, cancel and kill, a dropped connection continued, a silent one
stopped, the failures a user meets (host unreachable, key refused, host key changed, engine missing, disk full),
``batch --remote`` and the add-on's Convert with the remote engine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blender_equi360.jobs.job import Job, SourceSpec, load_job, save_job
from blender_equi360.jobs.remote import RemoteEngineProcess, RemoteHost, parse_destination, ssh_failure
from blender_equi360.media.remux import span_for_upload
from blender_equi360.media.video import probe, read_frames
from conftest import ROOT, run_engine, smooth_texture, write_clip

if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("no OpenSSH client (ssh, ssh-keygen) on PATH: the remote engine uses the system's ssh",
                allow_module_level=True)
if not sys.platform.startswith("linux"):
    pytest.skip("the tests look for the remote engine's processes in /proc", allow_module_level=True)
pytest.importorskip("asyncssh", reason="asyncssh (requirements.txt) runs the test SSH server")
from ssh_server import LoopbackSSH  # noqa: E402

CANVAS, DELIVERY = "512x256", "256x128"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LoopbackSSH(tmp_path_factory.mktemp("ssh"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {"short": write_clip(folder / "short.mp4", 10, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 5)),
            "long": write_clip(folder / "long.mp4", 41, 320, 134, 24, lambda k: smooth_texture(320, 134, k / 5))}


def remote_for(server, tmp_path, **fields) -> RemoteHost:
    return RemoteHost(**{"destination": server.destination, "python": sys.executable, "root": str(ROOT),
                         "jobs": str(tmp_path / "remote"), "identity": str(server.client_key),
                         "known_hosts": str(server.known_hosts), **fields})


def make_job(folder: Path, clip: Path, **fields) -> Path:
    folder.mkdir(parents=True)
    source = fields.pop("source", None) or SourceSpec(str(clip), size=CANVAS)
    save_job(folder, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                     delivery_size=DELIVERY, source=source, **fields))
    return folder


def run(process: RemoteEngineProcess, on_event=None, timeout: float = 120.0):
    """Drain the process until it ends: (final event, all events)."""
    events, deadline = [], time.monotonic() + timeout
    while not process.finished:
        assert time.monotonic() < deadline, "the remote run did not end"
        for event in process.poll():
            events.append(event)
            if on_event:
                on_event(event)
        time.sleep(0.02)
    return process.final_event, events


def engines_on(job_dir) -> list[int]:
    """The pids of the engines running the job folder (``python -m engine run JOB_DIR``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"engine" in argv and b"run" in argv and str(job_dir).encode() in argv:
                pids.append(int(entry.name))
    return pids


def wait_until_gone(job_dir, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while engines_on(job_dir):
        assert time.monotonic() - started < timeout, f"the remote engine on {job_dir} is still running"
        time.sleep(0.05)
    return time.monotonic() - started


def frames_of(path) -> list:
    return list(read_frames(path))


def same_video(a, b) -> bool:
    import numpy as np
    fa, fb = frames_of(a), frames_of(b)
    return len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb))


# --- a job through SSH ------------------------------------------------------------------------------------------

def test_a_draft_job_runs_on_the_remote_machine_and_its_result_comes_back(server, clips, tmp_path):
    job_dir = make_job(tmp_path / "local" / "shot_1", clips["short"], passes="png16")
    job_json = (job_dir / "job.json").read_bytes()
    remote = remote_for(server, tmp_path)
    started = time.monotonic()
    final, events = run(RemoteEngineProcess(remote, job_dir))
    seconds = time.monotonic() - started
    assert final["event"] == "done", final
    remote_dir = tmp_path / "remote" / "shot_1"
    local = job_dir / "result.mp4"
    assert final["outputs"] == {"video": str(local)} and final["remote_job_dir"] == str(remote_dir)
    assert local.read_bytes() == (remote_dir / "result.mp4").read_bytes()  # byte for byte
    assert probe(local).frame_count == 10 and final["draft"]
    # What went up: the clip (whole: it is short) and job.json; what came down: the result and its record.
    clip_bytes = clips["short"].stat().st_size
    assert clip_bytes < final["uploaded_bytes"] < clip_bytes + 4000
    upload = [e for e in events if e["event"] == "progress" and e["stage"] == "upload"]
    assert upload[-1]["step"] == upload[-1]["total"] == final["uploaded_bytes"]
    passes = sorted(p.name for p in (job_dir / "result_passes").iterdir())
    assert len(passes) == 10 and passes == sorted(p.name for p in (remote_dir / "result_passes").iterdir())
    assert all((job_dir / "result_passes" / p).read_bytes() == (remote_dir / "result_passes" / p).read_bytes()
               for p in passes)
    assert final["downloaded_bytes"] == sum(p.stat().st_size for p in [local, job_dir / "reference.json",
                                                                        *(job_dir / "result_passes").iterdir()])
    stages = list(dict.fromkeys(e["stage"] for e in events if e["event"] == "progress"))
    assert stages[:3] == ["connect", "upload", "reference"] and stages[-1] == "download"
    # The local job.json is untouched; the remote one names the uploaded clip.
    assert (job_dir / "job.json").read_bytes() == job_json
    assert load_job(remote_dir).source.path == "source.mp4" and (remote_dir / "source.mp4").stat().st_size == clip_bytes
    assert "running the job on" in (job_dir / "engine.log").read_text()  # (converting again finds the job)
    # The same video as the engine makes here.
    here = make_job(tmp_path / "here", clips["short"], passes="png16")
    assert run_engine(here)[0] == 0
    assert same_video(local, here / "result.mp4")
    assert not engines_on(remote_dir)
    print(f"remote draft job: {seconds:.1f} s")


def test_only_the_span_the_job_uses_is_uploaded_cut_without_re_encoding(server, tmp_path):
    import av
    import numpy as np
    clip = tmp_path / "take.mp4"  # 4 s with sound, a keyframe every half second
    with av.open(str(clip), "w") as container:
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 320, 134, "yuv420p"
        video.options = {"crf": "12", "preset": "veryfast", "g": "12"}
        sound = container.add_stream("aac", rate=48000)
        sound.layout = "stereo"
        for k in range(96):
            for packet in video.encode(av.VideoFrame.from_ndarray(smooth_texture(320, 134, k / 5), format="rgb24")):
                container.mux(packet)
            wave = np.sin(np.arange(2000) * 0.01 * (k + 1)).astype(np.float32)[None].repeat(2, 0)
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, k * 2000
            for packet in sound.encode(frame):
                container.mux(packet)
        for stream in (video, sound):
            for packet in stream.encode():
                container.mux(packet)
    spec = SourceSpec(str(clip), start_s=1.25, frames=17, size=CANVAS)
    job_dir = make_job(tmp_path / "local" / "take_1", clip, source=spec)
    final, events = run(RemoteEngineProcess(remote_for(server, tmp_path), job_dir, prepare_source=span_for_upload))
    assert final["event"] == "done", final
    assert final["uploaded_bytes"] < 0.7 * clip.stat().st_size
    assert any("without re-encoding" in e.get("message", "") for e in events)
    remote_job = load_job(tmp_path / "remote" / "take_1")
    assert remote_job.source.path == "source_span.mov" and remote_job.source.start_s == pytest.approx(0.25)
    here = make_job(tmp_path / "here", clip, source=spec)
    assert run_engine(here)[0] == 0
    assert same_video(job_dir / "result.mp4", here / "result.mp4")  # the same picture…
    with av.open(str(job_dir / "result.mp4")) as a, av.open(str(here / "result.mp4")) as b:  # …and the same sound
        sound_a = np.concatenate([f.to_ndarray() for f in a.decode(audio=0)], axis=1)
        sound_b = np.concatenate([f.to_ndarray() for f in b.decode(audio=0)], axis=1)
    assert np.array_equal(sound_a, sound_b)


def test_a_job_with_its_reference_made_uploads_the_reference(server, engine_reference, tmp_path):
    from conftest import copy_job_inputs
    job_dir = copy_job_inputs(engine_reference, tmp_path / "local" / "made_1")
    save_job(job_dir, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                      delivery_size=DELIVERY))
    final, _ = run(RemoteEngineProcess(remote_for(server, tmp_path), job_dir))
    assert final["event"] == "done", final
    sent = sum((job_dir / name).stat().st_size for name in ("reference.mkv", "mask.mkv", "reference.json"))
    assert sent < final["uploaded_bytes"] < sent + 4000
    assert probe(job_dir / "result.mp4").frame_count == 49


def test_a_reference_only_job_brings_the_reference_and_mask_back(server, clips, tmp_path):
    job_dir = make_job(tmp_path / "local" / "ref_1", clips["short"], stop_after="reference")
    final, _ = run(RemoteEngineProcess(remote_for(server, tmp_path), job_dir))
    assert final["event"] == "done", final
    assert final["outputs"] == {"reference": str(job_dir / "reference.mkv"), "mask": str(job_dir / "mask.mkv")}
    assert probe(job_dir / "reference.mkv").width == 512 and (job_dir / "reference.json").is_file()
    assert not (job_dir / "result.mp4").exists()


# --- cancel, a dropped connection -------------------------------------------------------------------------------

def long_job(folder, clip):
    return make_job(folder, clip, window_frames=25, window_overlap=9)  # 41 frames: 2 windows


def test_cancel_stops_the_remote_engine(server, clips, tmp_path):
    job_dir = long_job(tmp_path / "local" / "shot_c", clips["long"])
    process = RemoteEngineProcess(remote_for(server, tmp_path), job_dir)
    asked = []

    def on_event(event):
        if event["event"] == "progress" and event["stage"] == "draft" and not asked:
            asked.append(time.monotonic())
            process.ask_to_stop()
    final, _ = run(process, on_event)
    assert asked and final["code"] == "cancelled", final
    print(f"cancel to cancelled: {time.monotonic() - asked[0]:.2f} s")
    assert wait_until_gone(tmp_path / "remote" / "shot_c") < 5
    assert not (job_dir / "result.mp4").exists()


def test_a_dropped_connection_loses_nothing_and_the_next_run_continues(server, clips, tmp_path):
    job_dir = long_job(tmp_path / "local" / "shot_d", clips["long"])
    remote = remote_for(server, tmp_path)
    remote_dir = tmp_path / "remote" / "shot_d"
    dropped = []

    def on_event(event):
        if event["event"] == "progress" and event.get("window") == 2 and not dropped:
            dropped.append(time.monotonic())
            server.drop()  # mid-window: the network goes away
    final, _ = run(RemoteEngineProcess(remote, job_dir), on_event)
    assert dropped and final["code"] == "remote_connection_lost", final
    assert "convert again" in final["message"]
    assert time.monotonic() - dropped[0] < 5  # noticed at once, not after a timeout
    print(f"remote engine gone {wait_until_gone(remote_dir):.2f} s after the drop")
    manifest = json.loads((remote_dir / "windows.json").read_text())
    states = [w["state"] for w in manifest["windows"]]
    assert states == ["done", "pending"], states  # it stopped where it was
    first = remote_dir / "windows" / "window_0000.mkv"
    made = first.stat().st_mtime_ns
    assert not (job_dir / "result.mp4").exists()

    final, events = run(RemoteEngineProcess(remote, job_dir))
    assert final["event"] == "done", final
    assert first.stat().st_mtime_ns == made  # the finished window was kept, not made again
    assert any("already on" in e.get("message", "") for e in events)  # nor the clip uploaded again
    assert final["uploaded_bytes"] < 4000
    assert "reference" not in {e["stage"] for e in events if e["event"] == "progress"}
    (remote_dir / "source.mp4").unlink()  # a clip gone from there is sent again
    final, events = run(RemoteEngineProcess(remote, job_dir))
    assert final["event"] == "done" and final["uploaded_bytes"] > clips["long"].stat().st_size, final
    whole = long_job(tmp_path / "here", clips["long"])  # an uninterrupted run (here)
    assert run_engine(whole)[0] == 0
    assert same_video(job_dir / "result.mp4", whole / "result.mp4")


def test_a_silent_connection_stops_the_remote_engine(server, clips, tmp_path):
    """A link that goes quiet without closing (a laptop's Wi-Fi gone): the remote side hears no heartbeat and
    stops the engine, so the job is free for the next attempt. The local ssh is frozen to make the silence."""
    import signal
    job_dir = long_job(tmp_path / "local" / "shot_s", clips["long"])
    process = RemoteEngineProcess(remote_for(server, tmp_path), job_dir, heartbeat_s=0.2, remote_timeout_s=1.0)
    frozen = []

    def on_event(event):
        if event["event"] == "progress" and event["stage"] == "draft" and not frozen:
            frozen.append(process._call.proc.pid)
            os.kill(frozen[0], signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while not frozen:
            assert time.monotonic() < deadline
            for event in process.poll():
                on_event(event)
            time.sleep(0.02)
        remote_dir = tmp_path / "remote" / "shot_s"
        assert wait_until_gone(remote_dir, timeout=10) > 0.5
        assert not (remote_dir / "result.mp4").exists()  # stopped, not finished
    finally:
        if frozen:
            os.kill(frozen[0], signal.SIGCONT)
        process.kill()
    assert run(process)[0]["code"] == "cancelled"


def test_killing_the_local_client_ends_the_remote_engine(server, clips, tmp_path):
    job_dir = long_job(tmp_path / "local" / "shot_k", clips["long"])
    process = RemoteEngineProcess(remote_for(server, tmp_path), job_dir)
    killed = []

    def on_event(event):
        if event["event"] == "progress" and event["stage"] == "draft" and not killed:
            killed.append(time.monotonic())
            process.kill()
    final, _ = run(process, on_event)
    assert killed and final["code"] == "cancelled", final
    assert wait_until_gone(tmp_path / "remote" / "shot_k") < 5


# --- what users meet --------------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_host_is_reported_at_once(server, clips, tmp_path):
    job_dir = make_job(tmp_path / "local" / "shot_u", clips["short"])
    remote = remote_for(server, tmp_path, destination=f"someone@127.0.0.1:{closed_port()}")
    started = time.monotonic()
    final, _ = run(RemoteEngineProcess(remote, job_dir))
    assert final["code"] == "remote_unreachable", final
    assert "Connection refused" in final["message"] and "SSH server" in final["message"]
    assert time.monotonic() - started < 5


def test_a_refused_key_is_reported_with_what_to_do(server, clips, tmp_path):
    job_dir = make_job(tmp_path / "local" / "shot_k", clips["short"])
    final, _ = run(RemoteEngineProcess(remote_for(server, tmp_path, identity=str(server.other_key)), job_dir))
    assert final["code"] == "remote_auth", final
    assert "authorized_keys" in final["message"] and "other_key.pub" in final["message"]


def test_a_changed_host_key_is_refused(server, clips, tmp_path):
    known = tmp_path / "known_hosts"
    other = (server.folder / "other_key.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{server.port} {' '.join(other)}\n")
    job_dir = make_job(tmp_path / "local" / "shot_h", clips["short"])
    final, _ = run(RemoteEngineProcess(remote_for(server, tmp_path, known_hosts=str(known)), job_dir))
    assert final["code"] == "remote_host_key", final
    assert "ssh-keygen -R" in final["message"]


@pytest.mark.parametrize("where", ["python", "root"])
def test_a_missing_remote_engine_is_reported_before_any_upload(server, clips, tmp_path, where):
    job_dir = make_job(tmp_path / "local" / "shot_m", clips["short"])
    wrong = {"python": {"python": "/nowhere/bin/python"}, "root": {"root": str(tmp_path)}}[where]
    final, events = run(RemoteEngineProcess(remote_for(server, tmp_path, **wrong), job_dir))
    assert final["code"] == "remote_not_ready", final
    assert {"python": "engine setup", "root": "holds no engine"}[where] in final["message"]
    assert not any(e["event"] == "progress" and e["stage"] == "upload" for e in events)
    assert not (tmp_path / "remote").exists()


def test_a_full_remote_disk_is_reported(server, clips, tmp_path):
    """A file size limit on the remote commands (``ulimit -f``) refuses writes past it as a full disk does."""
    server.prefix = "ulimit -f 16; "  # 8 KiB (dash counts 512-byte blocks): the clip does not fit
    try:
        final, _ = run(RemoteEngineProcess(remote_for(server, tmp_path),
                                           make_job(tmp_path / "local" / "shot_f", clips["short"])))
        assert final["code"] == "remote_disk_full", final
        assert "free some space" in final["message"]
        server.prefix = "ulimit -f 200; "  # 100 KiB: the clip fits, the engine's reference does not
        final, _ = run(RemoteEngineProcess(remote_for(server, tmp_path),
                                           make_job(tmp_path / "local" / "shot_g", clips["short"])))
        assert final["code"] == "remote_disk_full", final
        assert "no room left" in final["message"] and "127.0.0.1" in final["message"]
    finally:
        server.prefix = ""


def test_destinations_and_the_ssh_command():
    assert parse_destination("ada@gpu-box.local:2222") == ("ada", "gpu-box.local", 2222)
    assert parse_destination("gpu-box") == (None, "gpu-box", None)
    assert parse_destination("ada@[fe80::1]:22") == ("ada", "fe80::1", 22)
    for bad in ("", "ada@", "ada@host:0", "ada@host:x", "-oProxyCommand=x", "ada@host; rm"):
        with pytest.raises(Exception, match="SSH destination"):
            parse_destination(bad)
    argv = RemoteHost("ada@box:2222", identity=None).ssh_command("true")
    assert argv[0] == "ssh" and "BatchMode=yes" in argv and "StrictHostKeyChecking=accept-new" in argv
    assert argv[-3:] == ["2222", "ada@box", "true"] and "-i" not in argv
    lost = ssh_failure(RemoteHost("ada@box"), "Timeout, server box not responding.", running=True)
    assert lost.code == "remote_connection_lost"
    assert ssh_failure(RemoteHost("ada@box"), "ssh: Could not resolve hostname box: Name or service not known")\
        .code == "remote_unreachable"


# --- the command line -------------------------------------------------------------------------------------------

def batch_argv(server, tmp_path, *job_dirs) -> list[str]:
    return [sys.executable, "-m", "blender_equi360", "batch", *map(str, job_dirs), "--remote", server.destination,
            "--identity", str(server.client_key), "--known-hosts", str(server.known_hosts),
            "--remote-python", sys.executable, "--remote-root", str(ROOT), "--remote-jobs", str(tmp_path / "remote")]


def test_batch_runs_a_job_on_the_remote_machine(server, clips, tmp_path):
    job_dir = make_job(tmp_path / "local" / "shot_b", clips["short"])
    argv = batch_argv(server, tmp_path, job_dir)
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "batch: 1 done, 0 skipped, 0 failed" in done.stdout and "uploaded" in done.stdout
    assert (job_dir / "result.mp4").read_bytes() == (tmp_path / "remote" / "shot_b" / "result.mp4").read_bytes()
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "batch: 0 done, 1 skipped" in again.stdout  # done is done, wherever it was made


def test_ctrl_c_in_a_remote_batch_cancels_the_remote_engine(server, clips, tmp_path):
    import signal
    job_dir = long_job(tmp_path / "local" / "shot_i", clips["long"])
    proc = subprocess.Popen(batch_argv(server, tmp_path, job_dir), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if "draft…" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "cancelled [cancelled]" in out
    assert wait_until_gone(tmp_path / "remote" / "shot_i") < 5


# --- the add-on -------------------------------------------------------------------------------------------------

def test_the_add_on_converts_a_strip_on_the_remote_machine(server, tmp_path):
    from test_addon import blender
    clip = write_clip(tmp_path / "plate.mp4", 3, 478, 200, 24, lambda k: smooth_texture(478, 200, k / 6))
    result = blender(tmp_path, body=f"""
        prefs.use_remote = True
        prefs.remote_host, prefs.remote_identity = {server.destination!r}, {str(server.client_key)!r}
        prefs.remote_python, prefs.remote_root = {sys.executable!r}, {str(ROOT)!r}
        prefs.remote_jobs = {str(tmp_path / "remote")!r}
        prefs.engine_python = ""  # not needed: nothing runs here
        add_camera()
        add_strip({str(clip)!r})
        bpy.context.preferences.system.use_online_access = False  # the network is the user's to allow
        try:
            refused = bpy.ops.equi360.convert()
        except RuntimeError as err:  # background mode: the error report
            refused = str(err)
        bpy.context.preferences.system.use_online_access = True
        no_folder = not os.path.exists({str(tmp_path / "jobs")!r}) or not os.listdir({str(tmp_path / "jobs")!r})
        outcome = bpy.ops.equi360.convert()
        report(outcome=sorted(outcome), refused=refused, no_folder=no_folder, status=scene.equi360.status,
               job_dir=scene.equi360.job_dir,
               strips=[s.filepath for s in all_strips()], known=os.listdir(bpy.utils.extension_path_user(
                   "bl_ext.test_repo.equi360")))
    """)
    assert "online access is off" in result["refused"] and result["no_folder"], result
    assert result["outcome"] == ["FINISHED"], result
    job_dir = Path(result["job_dir"])
    remote_dir = tmp_path / "remote" / job_dir.name
    assert (job_dir / "result.mp4").read_bytes() == (remote_dir / "result.mp4").read_bytes()
    assert str(job_dir / "result.mp4") in result["strips"] and result["status"].startswith("DRAFT done")
    assert "known_hosts" in result["known"]  # the host key went to the add-on's own record
    assert load_job(remote_dir).source.path.startswith("source")
