"""``python -m engine setup ENV_DIR``: the engine's own environment, installed for real (torch's CPU build) into a
fresh folder once per test session, and a draft conversion run with its Python; a repair; failing steps; cancels;
which torch for which machine (without installing); Install Engine in Blender (background mode: it blocks).

The install takes about a minute here and happens once per session whatever the number of xdist workers: the
first worker to need it makes it under a file lock and records its events, the others read them. Every test that
uses the environment holds a second lock, so that none changes it under another."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock
from test_addon import blender, bpy_python  # noqa: F401  (fixture)

from blender_equi360.jobs.job import Job, save_job
from blender_equi360.jobs.protocol import EXIT_CODES, parse_event
from blender_equi360.media.video import probe
from conftest import ROOT, copy_job_inputs
from engine.setup import (
    DEFAULT_CUDA_BUILD,
    INDEX_ENV,
    PYTORCH_INDEX,
    REQUIREMENTS,
    STEPS,
    TorchPlan,
    env_python,
    nvidia_driver,
    plan_torch,
    torch_is_current,
)

SETUP_TIMEOUT_S = 900
# setup runs before these exist: in the process that runs it they cannot be imported (its children are not touched)
GUARDED = ("import runpy, sys; sys.modules.update(dict.fromkeys(('torch', 'numpy', 'av', 'diffusers', "
           "'transformers', 'safetensors'))); runpy.run_module('engine', run_name='__main__', alter_sys=True)")
ENGINE_PACKAGES = [line.split("==")[0] for line in REQUIREMENTS.read_text().splitlines()
                   if line and not line.startswith("#")]


def setup_command(env_dir, *options, guarded=False) -> list[str]:
    head = [sys.executable, "-c", GUARDED] if guarded else [sys.executable, "-m", "engine"]
    return [*head, "setup", str(env_dir), *map(str, options)]


def setup(env_dir, *options, guarded=False, env=None) -> tuple[int, list, str]:
    proc = subprocess.run(setup_command(env_dir, *options, guarded=guarded), cwd=ROOT, capture_output=True,
                          text=True, timeout=SETUP_TIMEOUT_S, env=env)
    return proc.returncode, [parse_event(line) for line in proc.stdout.splitlines()], proc.stderr


def logs(events) -> list[str]:
    return [e["message"] for e in events if e["event"] == "log"]


def phases(events) -> list[str]:
    return [e["phase"] for e in events if e["event"] == "progress"]


def installed_version(python: Path, package: str) -> str | None:
    code = f"import importlib.metadata as m\ntry: print(m.version({package!r}))\nexcept m.PackageNotFoundError: pass"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip() or None


def processes_using(folder: Path) -> list[str]:
    """The command lines of the processes that name ``folder`` (pip, venv, the engine) still running."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text and "pytest" not in text:
            found.append(text)
    return found


def shared_folder(tmp_path_factory) -> Path:
    """The session's temporary folder that every xdist worker shares."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """The real install into a fresh folder, made once per session: its exit status, events, stderr, seconds."""
    root = shared_folder(tmp_path_factory)
    env_dir, record = root / "engine-env", root / "engine-env.json"
    with FileLock(str(root / "engine-env.lock")):
        if not record.exists():
            started = time.monotonic()
            rc, events, err = setup(env_dir, "--cpu")
            record.write_text(json.dumps({"rc": rc, "events": events, "stderr": err[-20000:],
                                          "seconds": round(time.monotonic() - started, 1)}))
    result = json.loads(record.read_text())
    assert result["rc"] == 0, result["stderr"][-4000:]
    return {**result, "env_dir": env_dir, "python": env_python(env_dir)}


@pytest.fixture
def engine_env(installed, tmp_path_factory):
    """The installed environment, used by this test alone while it runs."""
    with FileLock(str(shared_folder(tmp_path_factory) / "engine-env.use.lock")):
        yield installed


# --- the real install ---------------------------------------------------------------------------------------------

def test_setup_makes_the_cpu_environment_and_a_draft_runs_with_it(engine_env, engine_reference, tmp_path,
                                                                   record_property):
    events, python = engine_env["events"], engine_env["python"]
    record_property("install_seconds", engine_env["seconds"])
    print(f"setup --cpu into a fresh folder: {engine_env['seconds']} s")
    assert phases(events) == [*STEPS, "done"]
    assert [e["step"] for e in events if e["event"] == "progress"] == [0, 1, 2, 3, 4]
    assert events[-1]["event"] == "done" and not [e for e in events if e["event"] in ("error", "warning")]
    done = events[-1]
    assert done["outputs"] == {"python": str(python)} and done["folder"] == str(engine_env["env_dir"])
    # The CPU build, from PyTorch's CPU index (PyPI's Linux wheel is the CUDA one).
    assert done["torch"] == "2.13.0+cpu" and done["torch_index"] == PYTORCH_INDEX + "cpu"
    # pip's own words came as log events.
    assert any(m.startswith("Successfully installed") and "diffusers-0.42.1" in m for m in logs(events))
    # The check ran in the new environment: every package there, no GPU (and none needed for a draft).
    check = done["check"]
    assert check["packages"]["torch"] == "2.13.0+cpu" and None not in check["packages"].values()
    assert check["gpu"]["cuda"] is False and check["missing"] == ["cuda"]
    # The engine's packages and nothing of the development environment's.
    for package in ENGINE_PACKAGES:
        assert installed_version(python, package), package
    for package in ("bpy", "pytest", "ruff", "imageio-ffmpeg"):
        assert installed_version(python, package) is None, package

    # A draft conversion with the environment's Python, from the engine's folder as the add-on starts it.
    job = copy_job_inputs(engine_reference, tmp_path / "job")
    save_job(job, Job.from_fields(reference="reference.mkv", mask="mask.mkv", backend="draft",
                                  delivery_size="512x256"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(python), "-m", "engine", "run", str(job)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = [parse_event(line) for line in run.stdout.splitlines()][-1]
    assert result["event"] == "done" and result["backend"] == "draft"
    assert probe(result["outputs"]["video"]).frame_count == 49


def test_setting_up_again_repairs_without_downloading(engine_env):
    env_dir, python = engine_env["env_dir"], engine_env["python"]
    started = time.monotonic()
    rc, events, err = setup(env_dir, "--cpu")
    seconds = time.monotonic() - started
    assert rc == 0, err
    said = logs(events)
    assert f"{env_dir}: the environment is there and works: kept" in said
    assert "torch 2.13.0+cpu is installed: kept" in said
    assert any(m.startswith("Requirement already satisfied: diffusers==0.42.1") for m in said)
    assert not [m for m in said if m.startswith(("Collecting", "Downloading", "Installing collected"))]
    assert seconds < 60, seconds  # about 5 s here: pip asks no index when everything is satisfied

    # A package gone (a half-made install, a user's pip uninstall): setup puts back that one alone.
    subprocess.run([str(python), "-m", "pip", "uninstall", "--yes", "safetensors"], check=True, capture_output=True)
    rc, events, err = setup(env_dir, "--cpu")
    assert rc == 0, err
    assert [m for m in logs(events) if m.startswith("Successfully installed")] == [
        "Successfully installed safetensors-0.8.0"]
    assert events[-1]["check"]["packages"]["safetensors"] == "0.8.0"


def test_cancel_while_pip_installs_then_setup_again_finishes(engine_env):
    """SIGINT to setup's process group (Ctrl+C, and the add-on's Esc): pip, in its own group, is killed; the
    error is ``cancelled``; the next setup installs what pip was installing."""
    env_dir, python = engine_env["env_dir"], engine_env["python"]
    subprocess.run([str(python), "-m", "pip", "uninstall", "--yes", "transformers"], check=True, capture_output=True)
    proc = subprocess.Popen(setup_command(env_dir, "--cpu"), cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE, start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(parse_event(line))
        if phases(seen)[-1:] == ["packages"] and seen[-1]["event"] == "log" and \
                not seen[-1]["message"].startswith("$ "):
            break  # pip is at work: it has said its first line
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    events = seen + [parse_event(line) for line in out.splitlines()]
    assert proc.returncode == EXIT_CODES["cancelled"], err
    assert events[-1]["event"] == "error" and events[-1]["code"] == "cancelled"
    assert "run it again" in events[-1]["message"]
    assert not processes_using(env_dir)  # pip's group went with it
    assert installed_version(python, "transformers") is None

    rc, events, err = setup(env_dir, "--cpu")
    assert rc == 0, err
    assert any(m.startswith("Successfully installed") and "transformers-5.23.0" in m for m in logs(events))
    assert events[-1]["check"]["packages"]["transformers"] == "5.23.0"


# --- failures and cancels that install nothing --------------------------------------------------------------------

@pytest.mark.parametrize("left", ["venv_cut_short", "python_gone"])
def test_a_failing_step_says_which_what_pip_said_and_how_to_retry(tmp_path, left):
    """A broken environment is made again; then torch cannot be found (a version no index has: the torch step
    fails, as a bogus index or no connection would) and the error names the step, quotes pip and says how to
    retry. setup itself imports none of what it installs."""
    env_dir = tmp_path / "env"
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "lib").mkdir()
    if left == "python_gone":  # made from a Python (a Blender) since removed
        (env_dir / "pyvenv.cfg").write_text("home = /opt/blender-4.2/4.2/python/bin\n")
        (env_dir / "bin" / "python").symlink_to("/opt/blender-4.2/4.2/python/bin/python3.11")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==0.0.1\n")
    env = {**os.environ, INDEX_ENV: "pip"}  # pip's own index (PyPI and what pip.conf adds), through the variable
    rc, events, err = setup(env_dir, "--requirements", requirements, guarded=True, env=env)
    assert rc == EXIT_CODES["setup_failed"] == 27, err
    assert phases(events) == ["venv", "torch"]
    error = events[-1]
    assert error["event"] == "error" and error["code"] == "setup_failed" and "\n" not in error["message"]
    message = error["message"]
    assert message.startswith("setup failed at step 2/4 (torch): pip could not install torch==0.0.1 from pip's own "
                              "index")
    pip_said = message.split("index (", 1)[1]
    assert pip_said.startswith("ERROR: ") and "torch==0.0.1" in pip_said  # pip's own last words
    assert f"run setup again (python -m engine setup {env_dir}" in message and "--torch-index" in message
    assert (env_dir / "pyvenv.cfg").is_file() and installed_version(env_python(env_dir), "pip")  # the venv, remade
    if left == "python_gone":
        assert f"{env_dir}: {env_python(env_dir)} is missing: making the environment again" in logs(events)


def test_a_folder_that_is_not_an_environment_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "Documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("mine")
    rc, events, err = setup(folder, "--cpu", guarded=True)
    assert rc == EXIT_CODES["setup_failed"], err
    assert phases(events) == ["venv"]
    assert events[-1]["message"].startswith(f"setup failed at step 1/4 (venv): {folder} holds other files "
                                            "(thesis.txt) and is not a Python environment")
    assert "Choose an empty or a new folder" in events[-1]["message"]
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]


def test_cancel_by_stdin_while_the_venv_is_made_leaves_a_folder_setup_takes_again(tmp_path):
    env_dir = tmp_path / "env"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==0.0.1\n")
    options = ("--requirements", requirements, "--torch-index", "pip")
    proc = subprocess.Popen(setup_command(env_dir, *options, guarded=True), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE)
    for line in proc.stdout:
        if parse_event(line).get("phase") == "venv":
            break
    proc.stdin.write("cancel\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CODES["cancelled"], err
    assert parse_event(out.splitlines()[-1])["code"] == "cancelled"
    assert not processes_using(env_dir)
    # Whatever the cancel left, the next setup makes the venv and goes on (to the torch no index has).
    rc, events, err = setup(env_dir, *options)
    assert rc == EXIT_CODES["setup_failed"] and phases(events) == ["venv", "torch"], err
    assert installed_version(env_python(env_dir), "pip")


# --- which torch, without installing -----------------------------------------------------------------------------

@pytest.mark.parametrize("cpu,index,driver,platform,expected", [
    (True, None, None, "linux", ("torch==2.13.0+cpu", PYTORCH_INDEX + "cpu", "cpu")),
    (False, None, None, "linux", ("torch==2.13.0+cpu", PYTORCH_INDEX + "cpu", "cpu")),
    (False, None, None, "win32", ("torch==2.13.0", None, "cpu")),  # PyPI's Windows wheel is the CPU build
    (False, None, None, "darwin", ("torch==2.13.0", None, "cpu")),
    (False, None, (12, 8), "linux", ("torch==2.13.0+cu128", PYTORCH_INDEX + "cu128", "cu128")),
    (False, None, (12, 2), "win32", ("torch==2.13.0+cu128", PYTORCH_INDEX + "cu128", "cu128")),
    (False, None, (13, 1), "linux", ("torch==2.13.0+cu130", PYTORCH_INDEX + "cu130", "cu130")),
    (False, None, "unknown", "linux", (f"torch==2.13.0+{DEFAULT_CUDA_BUILD}", PYTORCH_INDEX + DEFAULT_CUDA_BUILD,
                                       DEFAULT_CUDA_BUILD)),
    (True, None, (12, 8), "linux", ("torch==2.13.0+cpu", PYTORCH_INDEX + "cpu", "cpu")),  # --cpu wins
    (False, "pip", (12, 8), "linux", ("torch==2.13.0", None, None)),
    (False, "https://mirror.example/simple", None, "linux", ("torch==2.13.0", "https://mirror.example/simple", None)),
    (False, PYTORCH_INDEX + "cu130/", None, "linux", ("torch==2.13.0+cu130", PYTORCH_INDEX + "cu130/", "cu130")),
])
def test_the_torch_build_follows_the_driver_and_the_options(cpu, index, driver, platform, expected):
    found = None if driver is None else {"driver": "570.1", "source": "nvidia-smi",
                                         "cuda": None if driver == "unknown" else driver}
    plan = plan_torch("torch==2.13.0", cpu, index, found, platform=platform)
    assert (plan.requirement, plan.index, plan.build) == expected
    assert plan.why


@pytest.mark.parametrize("installed,build,platform,current", [
    ("2.13.0+cpu", "cpu", "linux", True),
    ("2.13.0+cpu", "cu128", "linux", False),    # a driver came: the CUDA build replaces it
    ("2.13.0+cu128", "cpu", "linux", False),    # --cpu
    ("2.12.1+cpu", "cpu", "linux", False),      # another version
    ("2.13.0", "cpu", "linux", False),          # PyPI's Linux wheel is a CUDA build
    ("2.13.0", "cpu", "win32", True),           # PyPI's Windows wheel is the CPU build
    ("2.13.0+cu130", None, "linux", True),      # an index that does not say: any build of the version
    (None, "cpu", "linux", False),
])
def test_the_installed_torch_is_kept_when_it_is_the_one_wanted(installed, build, platform, current):
    labelled = build and not (build == "cpu" and platform == "win32")
    requirement = f"torch==2.13.0+{build}" if labelled else "torch==2.13.0"
    plan = TorchPlan(requirement, None, build, "")
    assert torch_is_current(installed, plan, platform=platform) is current


SMI = """Thu Dec  3 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
"""


def test_an_nvidia_driver_is_found_by_nvidia_smi(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n/bin/cat <<'EOF'\n{SMI}EOF\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nvidia_driver() == {"driver": "570.86.15", "cuda": (12, 8), "source": str(smi)}
    # One that cannot talk to the driver does not count.
    smi.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the driver\"\n"
                   "exit 9\n")
    if not Path("/proc/driver/nvidia/version").exists():
        assert nvidia_driver() is None


def test_setup_is_a_command_of_the_engine():
    run = subprocess.run([sys.executable, "-c", GUARDED, "setup", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert "--cpu" in run.stdout and "--torch-index URL" in run.stdout and INDEX_ENV in run.stdout


# --- Install Engine in Blender -----------------------------------------------------------------------------------

def test_install_engine_sets_the_engine_python_and_shows_the_check(engine_env, tmp_path, bpy_python):  # noqa: F811
    env_dir, python = engine_env["env_dir"], engine_env["python"]
    foreign = tmp_path / "Documents"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    result = blender(tmp_path, bpy_python=bpy_python, body=f"""
        def run(operator, **properties):
            try:
                return sorted(operator(**properties)), ""
            except RuntimeError as err:  # reports of level ERROR raise from bpy.ops in background mode
                return ["CANCELLED"], str(err)
        install = sys.modules["bl_ext.test_repo.equi360.operators.install"]
        default_folder = str(install.engine_folder(prefs))
        prefs.engine_dir = {str(env_dir)!r}
        prefs.engine_python = "/gone/bin/python"  # an Engine Python that does not run: Blender's own runs setup
        made = run(bpy.ops.equi360.install_engine)
        made_python, made_report = prefs.engine_python, prefs.check_report
        prefs.engine_dir = {str(foreign)!r}
        refused = run(bpy.ops.equi360.install_engine)
        calls = []
        class Layout:
            def __getattr__(self, name):
                def call(*args, **kwargs):
                    calls.append([name, *[a for a in args if isinstance(a, str)],
                                  *sorted(f"{{k}}={{v}}" for k, v in kwargs.items())])
                    return self
                return call
        install.draw_engine(Layout(), prefs)
        report(default_folder=default_folder, made=made, made_python=made_python, made_report=made_report,
               refused=refused, after_refused=prefs.engine_python, refused_report=prefs.check_report, calls=calls)
    """)
    assert result["default_folder"].startswith(str(tmp_path / "user"))
    assert Path(result["default_folder"]).name == "engine-env"
    # Made (here: repaired, it was complete): Engine Python is the environment's, the check is shown.
    assert result["made"] == [["FINISHED"], ""]
    assert result["made_python"] == str(python)
    assert result["made_report"].startswith(f"Engine installed in {env_dir}: torch 2.13.0+cpu")
    assert "GPU: none" in result["made_report"] and "Missing: cuda" in result["made_report"]
    # A failed step: its code and message, and Engine Python as it was.
    status, message = result["refused"]
    assert status == ["CANCELLED"] and "Equi360 [setup_failed]: setup failed at step 1/4 (venv)" in message
    assert result["after_refused"] == str(python) and "Install Engine failed [setup_failed]" in result["refused_report"]
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # In the preferences: the engine's Python and folder, Install and Check, and what they said.
    calls = result["calls"]
    assert calls[:5] == [["prop", "engine_python"], ["prop", "engine_dir"], ["row"],
                         ["operator", "equi360.install_engine", "icon=IMPORT"],
                         ["operator", "equi360.check_engine", "icon=CHECKMARK"]]
    assert ["label", "text=" + result["refused_report"]] in calls
