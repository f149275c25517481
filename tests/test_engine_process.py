"""The add-on's engine client against scripted fake engines: events in order, errors, crashes, a
cooperative cancel, and a stubborn engine (and its child) killed as a group."""

import textwrap
import time

import pytest

from blender_equi360.jobs.engine_process import EngineProcess
from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.jobs.protocol import EXIT_CODES


def fake_engine(tmp_path, body: str):
    """A folder with an ``engine`` package whose ``python -m engine run JOB`` runs ``body``."""
    package = tmp_path / "fake" / "engine"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent("""
        import json, os, signal, subprocess, sys, time
        def emit(event, **fields):
            print(json.dumps({"event": event, **fields}), flush=True)
        job = sys.argv[2]
    """) + textwrap.dedent(body))
    return package.parent


def start(tmp_path, body):
    import sys
    return EngineProcess(sys.executable, tmp_path / "job", cwd=fake_engine(tmp_path, body))


def collect(process, timeout=20):
    events, deadline = [], time.monotonic() + timeout
    while not process.finished and time.monotonic() < deadline:
        events += process.poll()
        time.sleep(0.02)
    assert process.finished, "the engine did not finish"
    return events


def test_events_arrive_in_order_and_end_with_done(tmp_path):
    process = start(tmp_path, """
        for i in range(1, 4):
            emit("progress", stage="denoise", step=i, total=3, eta_s=None)
        print("a log line on stderr", file=sys.stderr)
        emit("done", outputs={"video": job + "/result.mp4"}, seconds=0.1, peak_vram_gb=None, backend="draft",
             draft=True)
    """)
    events = collect(process)
    assert [e.get("step") for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert events[-1]["event"] == "done" and process.final_event == events[-1]


def test_an_engine_error_keeps_its_code_and_message(tmp_path):
    process = start(tmp_path, f"""
        emit("error", code="missing_weights", message="LTX checkpoint not found: /x (set it in the preferences)")
        sys.exit({EXIT_CODES["missing_weights"]})
    """)
    events = collect(process)
    assert events[-1] == {"event": "error", "code": "missing_weights",
                          "message": "LTX checkpoint not found: /x (set it in the preferences)"}


@pytest.mark.parametrize("body, words", [
    ("print('Traceback: boom', file=sys.stderr); sys.exit(1)", "status 1"),
    ("os.kill(os.getpid(), signal.SIGKILL)", "signal 9"),
])
def test_a_crash_without_a_final_event_becomes_an_error_with_the_stderr_tail(tmp_path, body, words):
    events = collect(start(tmp_path, "print('not json', flush=True)\n" + body))
    assert events[-1]["event"] == "error" and events[-1]["code"] == "crashed" and words in events[-1]["message"]
    assert any("not protocol" in e.get("message", "") for e in events)


def test_cancel_is_cooperative_first(tmp_path):
    process = start(tmp_path, f"""
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # listens on stdin instead
        emit("progress", stage="denoise", step=1, total=100, eta_s=None)
        for line in sys.stdin:
            if line.strip() == "cancel":
                emit("error", code="cancelled", message="cancelled by the user; nothing was written")
                sys.exit({EXIT_CODES["cancelled"]})
    """)
    while not process.poll():
        time.sleep(0.02)
    started = time.monotonic()
    process.cancel(grace_s=5)
    events = collect(process)
    assert time.monotonic() - started < 4
    assert events[-1]["code"] == "cancelled"


def test_a_stubborn_engine_and_its_child_are_killed(tmp_path):
    process = start(tmp_path, """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ignores_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", ignores_term])
        emit("log", message=f"child {child.pid}")
        time.sleep(600)
    """)
    while not (events := process.poll()):
        time.sleep(0.02)
    child = int(events[0]["message"].split()[1])
    process.cancel(grace_s=0.5)
    events = collect(process)
    assert events[-1]["code"] == "crashed" and "signal 9" in events[-1]["message"]
    time.sleep(0.2)
    assert not alive(child)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


def test_a_python_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(Equi360Error, match="could not start the engine with '/no/such/python'"):
        EngineProcess("/no/such/python", tmp_path, cwd=tmp_path)


def test_an_engine_does_not_outlive_the_process_that_started_it(tmp_path):
    """Blender quitting (its Python exiting) takes a running engine with it."""
    import subprocess
    import sys
    folder = fake_engine(tmp_path, "emit('log', message='up'); time.sleep(600)")
    script = textwrap.dedent(f"""
        import sys, time
        from blender_equi360.jobs.engine_process import EngineProcess
        process = EngineProcess(sys.executable, {str(tmp_path)!r}, cwd={str(folder)!r})
        while not process.poll():
            time.sleep(0.02)
        print(process.pid, flush=True)
    """)
    from conftest import ROOT
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    engine_pid = int(run.stdout.split()[0])
    time.sleep(0.3)
    assert not alive(engine_pid)
