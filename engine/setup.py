# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine setup ENV_DIR``: make (or repair) the engine's own Python environment.

It runs before torch, numpy or PyAV exist, so this module and what ``python -m engine setup`` imports are the
standard library only; any Python 3.11 or newer runs it (Blender's own, or the system's). Four steps, each
announced by a ``progress`` event of stage ``setup`` whose ``phase`` names it, with the output of pip as ``log``
events:

1. **venv**: ``python -m venv ENV_DIR`` (with pip, through ``ensurepip``: nothing is downloaded). An environment
   already there whose Python runs and has pip is kept; a broken one (its Python gone with the Blender or Python
   it was made from, pip missing, a venv cut short) is made again. A folder holding anything else is refused.
2. **torch**: the build for this machine. Where an NVIDIA driver answers (``nvidia-smi``, or on Linux
   ``/proc/driver/nvidia/version``), PyTorch's CUDA build for the CUDA version the driver supports
   (:data:`CUDA_BUILDS`); otherwise, or with ``--cpu``, the CPU build (PyTorch's CPU index on Linux, where
   PyPI's wheel is the CUDA one; pip's own index elsewhere, where it is the CPU one). ``--torch-index URL``
   (or ``EQUI360_TORCH_INDEX``) sets the index, ``pip`` for pip's own (its configuration: PyPI unless set
   otherwise). torch alone, without its dependencies (those come from pip's own index in the next step); kept
   when the version and build are already the ones wanted.
3. **packages**: ``pip install -r requirements-engine.txt`` (diffusers, transformers, …, and torch's own
   dependencies). pip keeps what is already satisfied, so a repair downloads only what is missing.
4. **check**: ``ENV_DIR``'s Python runs ``python -m engine check`` from the engine's folder; its report is in
   the ``done`` event (``outputs``: ``{"python": the environment's interpreter}``, for the preferences).

Only packages are installed: the engine's code stays in its folder (the extension, or the repository), and runs
there (``python -m engine`` with that folder as the working directory). Nothing needs administrator rights.

Cancelling (the line ``cancel`` on stdin, SIGINT, or SIGTERM) kills pip's process group and ends with the error
``cancelled``; running setup again finishes the job. A step that fails ends with ``setup_failed``: the step,
pip's last lines, and how to retry.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from blender_equi360.jobs.protocol import EXIT_CODES

from .protocol_io import Channel, EngineError

ROOT = Path(__file__).resolve().parents[1]  # the engine's folder: engine/ and blender_equi360/ (the extension)
REQUIREMENTS = ROOT / "requirements-engine.txt"
INDEX_ENV = "EQUI360_TORCH_INDEX"
PIP_INDEX = "pip"  # --torch-index pip: pip's own index, as its configuration says
PYTORCH_INDEX = "https://download.pytorch.org/whl/"
# PyTorch's CUDA builds, newest first, each with the oldest CUDA version a driver must support to run it (CUDA
# 12.x builds run on any 12.x driver: minor version compatibility).
CUDA_BUILDS = (("cu130", (13, 0)), ("cu128", (12, 0)))
DEFAULT_CUDA_BUILD = "cu128"  # a driver that does not say which CUDA version it supports
STEPS = ("venv", "torch", "packages", "check")
MIN_PYTHON = (3, 11)
PIP_TAIL = 4            # pip's last lines in an error message
KILL_GRACE_S = 1.5      # pip's group is terminated, then killed: well inside the client's own 3 s
# What a venv (or one cut short) holds: such a folder may be emptied and made again; any other is the user's.
VENV_ENTRIES = {"bin", "Scripts", "lib", "Lib", "lib64", "include", "Include", "share", "etc", "pyvenv.cfg"}


@dataclass(frozen=True)
class TorchPlan:
    requirement: str        # what pip is asked for: torch==2.13.0, or torch==2.13.0+cu128 on PyTorch's index
    index: str | None       # the index it comes from; None: pip's own
    build: str | None       # cpu, cu128, …; None: whatever the index has (an index not PyTorch's)
    why: str                # the choice, in words, for the log


def env_python(env_dir: Path) -> Path:
    """The interpreter of the environment in ``env_dir``."""
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# --- which torch -----------------------------------------------------------------------------------------------

def nvidia_driver() -> dict | None:
    """``{"driver": version | None, "cuda": (major, minor) | None, "source": how}`` when an NVIDIA driver is
    there, else None. ``nvidia-smi`` (on PATH, or where the driver puts it on Windows) must answer; on Linux the
    kernel module's ``/proc/driver/nvidia/version`` is enough (the CUDA version is then unknown)."""
    for smi in _nvidia_smi_candidates():
        try:
            run = subprocess.run([smi], capture_output=True, text=True, timeout=30, **_no_window())
        except (OSError, subprocess.SubprocessError):
            continue
        if run.returncode == 0:
            driver = re.search(r"Driver Version:\s*([\d.]+)", run.stdout)
            cuda = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", run.stdout)
            return {"driver": driver.group(1) if driver else None,
                    "cuda": (int(cuda.group(1)), int(cuda.group(2))) if cuda else None, "source": smi}
    proc = Path("/proc/driver/nvidia/version")
    if sys.platform.startswith("linux") and proc.is_file():
        try:
            found = re.search(r"Kernel Module(?: for \S+)?\s+([\d.]+)", proc.read_text(errors="replace"))
        except OSError:
            found = None
        return {"driver": found.group(1) if found else None, "cuda": None, "source": str(proc)}
    return None


def _nvidia_smi_candidates() -> list[str]:
    found = [shutil.which("nvidia-smi")]
    if os.name == "nt":  # the driver installs it here; older drivers under Program Files
        found += [os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvidia-smi.exe"),
                  os.path.join(os.environ.get("ProgramFiles", r"C:\Program Files"), "NVIDIA Corporation", "NVSMI",
                               "nvidia-smi.exe")]
    return list(dict.fromkeys(p for p in found if p and os.path.isfile(p)))


def cuda_build(cuda: tuple[int, int] | None) -> str:
    """PyTorch's CUDA build for a driver that supports CUDA ``cuda`` (the newest it can run)."""
    if cuda is None:
        return DEFAULT_CUDA_BUILD
    return next((tag for tag, needs in CUDA_BUILDS if cuda >= needs), CUDA_BUILDS[-1][0])


def build_of_index(index: str | None) -> str | None:
    """cpu, cu128, … for one of PyTorch's indexes (…/whl/cu128); None for any other."""
    found = re.search(r"/whl/(cpu|cu\d+|rocm[\d.]+|xpu)/?$", index or "")
    return found.group(1) if found else None


def plan_torch(requirement: str, cpu: bool, index: str | None, driver: dict | None,
               platform: str = sys.platform) -> TorchPlan:
    """The torch to install: ``requirement`` (``torch==2.13.0``) from the index this machine needs."""
    pinned = requirement.partition("==")[2] if "==" in requirement else None
    if index:  # chosen by the user
        index = None if index == PIP_INDEX else index
        build = build_of_index(index)
        why = "torch from " + (index or "pip's own index") + " (as asked)"
    elif cpu or driver is None:
        build = "cpu"
        # PyPI's Linux wheel is the CUDA build (with gigabytes of CUDA libraries); elsewhere it is the CPU one.
        index = PYTORCH_INDEX + "cpu" if platform.startswith("linux") else None
        why = "the CPU build (" + ("as asked" if cpu else "no NVIDIA driver found") + ")"
    else:
        build = cuda_build(driver["cuda"])
        index = PYTORCH_INDEX + build
        cuda = ".".join(map(str, driver["cuda"])) if driver["cuda"] else "an unknown version"
        why = (f"the CUDA build {build}: an NVIDIA driver {driver['driver'] or ''} supporting CUDA {cuda} answers "
               f"({driver['source']})").replace("  ", " ")
    if pinned and index and build and not platform.startswith("darwin"):  # PyTorch's own wheels carry the build
        requirement = f"torch=={pinned}+{build}"
    return TorchPlan(requirement, index, build, why)


def torch_is_current(installed: str | None, plan: TorchPlan, platform: str = sys.platform) -> bool:
    """Whether the torch already installed (its version, e.g. ``2.13.0+cpu``) is the one ``plan`` asks for."""
    if installed is None:
        return False
    public, _, label = installed.partition("+")
    wanted = plan.requirement.partition("==")[2].partition("+")[0]
    if wanted and public != wanted:
        return False
    if plan.build is None:
        return True
    if label:
        return label == plan.build
    # No label: PyPI's wheel, or PyTorch's macOS one: the CPU build except on Linux (CUDA, of a version not said).
    return plan.build == "cpu" and not platform.startswith("linux")


def torch_requirement(requirements: Path) -> str:
    """The requirements file's torch line (``torch==2.13.0``)."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip().replace(" ", "")
        if re.fullmatch(r"torch(\[[\w,]*\])?([=<>!~].*)?", line):
            return line
    raise EngineError("setup_failed", f"{requirements} names no torch version: add a line torch==VERSION")


# --- running pip, cancellably -----------------------------------------------------------------------------------

def _no_window() -> dict:
    return {"creationflags": subprocess.CREATE_NO_WINDOW} if os.name == "nt" else {}


def _own_group() -> dict:
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate ``proc`` and everything it started, then kill what is left."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True, **_no_window())
        proc.wait()
        return
    def signal_group(sig) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    signal_group(signal.SIGKILL)  # the leader if it is still there, and any child that outlived it
    proc.wait()


def pip_env() -> dict:
    """The environment of setup's commands: output line by line, no questions, never ``--user`` (the target is
    the environment)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_PROGRESS_BAR": "off", "PIP_USER": "0"}
    for name in ("PYTHONHOME", "PYTHONPATH", "__PYVENV_LAUNCHER__"):  # a caller's Python must not leak in
        env.pop(name, None)
    return env


def run_logged(command: list[str], channel: Channel, cwd=None, keep_stdout: bool = False) -> tuple[int, list, str]:
    """Run ``command`` in its own process group, each line it prints a ``log`` event. Returns (exit status,
    its last lines, its stdout if ``keep_stdout``: then only stderr is logged). A cancel kills the group and
    raises the error ``cancelled``."""
    channel.log("$ " + " ".join(command))
    proc = subprocess.Popen(command, cwd=cwd, env=pip_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE if keep_stdout else subprocess.STDOUT, text=True,
                            encoding="utf-8", errors="replace", **_own_group())
    lines: queue.Queue = queue.Queue()
    kept: list[str] = []

    def read(stream, into):
        for line in stream:
            into(line.rstrip())
        lines.put(None)

    readers = [threading.Thread(target=read, args=(proc.stdout, kept.append if keep_stdout else lines.put),
                                daemon=True)]
    if keep_stdout:
        readers.append(threading.Thread(target=read, args=(proc.stderr, lines.put), daemon=True))
    for reader in readers:
        reader.start()
    tail: deque = deque(maxlen=PIP_TAIL * 4)
    ended = 0
    while ended < len(readers):  # each reader ends with a None
        if channel.cancel_requested:
            _kill_group(proc)
            raise cancelled()
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        if line is None:
            ended += 1
            continue
        if line.strip():
            tail.append(line.strip())
            channel.log(line)
    return proc.wait(), list(tail), "\n".join(kept)


def cancelled() -> EngineError:
    return EngineError("cancelled", "setup cancelled: run it again (python -m engine setup ENV_DIR, or Install "
                                    "Engine) to finish; what is installed is kept, and what pip was installing "
                                    "is installed again")


# --- the steps --------------------------------------------------------------------------------------------------

class StepFailed(EngineError):
    def __init__(self, step: str, what: str, tail: list, how: str, env_dir: Path):
        number = STEPS.index(step) + 1
        said = [line for line in tail if not line.startswith("$ ")]
        errors = [line for line in said if line.startswith("ERROR:")]  # pip's own summary, when it gives one
        said = (errors or said)[-PIP_TAIL:]
        last = f" ({' | '.join(said)})" if said else ""
        super().__init__("setup_failed", f"setup failed at step {number}/{len(STEPS)} ({step}): {what}{last}. "
                                         f"{how}, then run setup again (python -m engine setup {env_dir}, or "
                                         "Install Engine in the add-on's preferences): what is installed is kept")
        self.step = step


def _installed_version(python: Path, package: str) -> str | None:
    code = ("import importlib.metadata as m\ntry:\n    print(m.version(%r))\nexcept m.PackageNotFoundError:\n"
            "    pass" % package)
    try:
        run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, env=pip_env(),
                             **_no_window())
    except (OSError, subprocess.SubprocessError):
        return None
    return (run.stdout.strip() or None) if run.returncode == 0 else None


def _python_works(python: Path) -> str | None:
    """Why the environment's Python cannot be used (None: it runs, is new enough and has pip)."""
    if not python.is_file():
        return f"{python} is missing"
    code = "import sys, pip; print('%d.%d' % sys.version_info[:2])"
    try:
        run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, env=pip_env(),
                             **_no_window())
    except (OSError, subprocess.SubprocessError) as err:
        return f"its Python does not run ({err})"
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines()
        return f"its Python does not work ({lines[-1] if lines else f'exit status {run.returncode}'})"
    try:
        version = tuple(int(part) for part in run.stdout.strip().split("."))
    except ValueError:
        return f"its Python said {run.stdout.strip()[:40]!r} for its version"
    if version < MIN_PYTHON:
        return f"its Python is {run.stdout.strip()}, older than {'.'.join(map(str, MIN_PYTHON))}"
    return None


def step_venv(env_dir: Path, channel: Channel) -> None:
    python = env_python(env_dir)
    if (env_dir / "pyvenv.cfg").is_file():
        broken = _python_works(python)
        if broken is None:
            channel.log(f"{env_dir}: the environment is there and works: kept")
            return
        channel.log(f"{env_dir}: {broken}: making the environment again")
    elif env_dir.exists():
        if not env_dir.is_dir():
            raise StepFailed("venv", f"{env_dir} is a file, not a folder", [], "Choose a folder", env_dir)
        other = sorted(p.name for p in env_dir.iterdir() if p.name not in VENV_ENTRIES)
        if other:
            raise StepFailed("venv", f"{env_dir} holds other files ({', '.join(other[:3])}"
                                     f"{', …' if len(other) > 3 else ''}) and is not a Python environment",
                             [], "Choose an empty or a new folder for the engine's environment", env_dir)
    # The venv is made from the Python behind this one (when this one is itself in a venv, perhaps this one).
    base = getattr(sys, "_base_executable", None) or sys.executable
    command = [base, "-m", "venv", *(["--clear"] if env_dir.exists() else []), str(env_dir)]
    status, tail, _ = run_logged(command, channel)
    broken = _python_works(python) if status == 0 else f"venv exited with status {status}"
    if broken:
        raise StepFailed("venv", f"Python's venv could not make the environment: {broken}", tail,
                         "Check that the folder can be written; on Debian or Ubuntu install python3-venv, or run "
                         "setup with another Python 3.11 or newer", env_dir)


def step_torch(env_dir: Path, plan: TorchPlan, channel: Channel) -> str:
    python = env_python(env_dir)
    installed = _installed_version(python, "torch")
    channel.log(f"torch: {plan.why}")
    if torch_is_current(installed, plan):
        channel.log(f"torch {installed} is installed: kept")
        return installed
    command = [str(python), "-m", "pip", "install", "--no-deps", plan.requirement]
    if installed is not None:  # another version or build: replaced (downloaded first, so a failure keeps it)
        command.append("--force-reinstall")
    if plan.index:
        command += ["--index-url", plan.index]
    status, tail, _ = run_logged(command, channel)
    if status != 0:
        where = plan.index or "pip's own index"
        raise StepFailed("torch", f"pip could not install {plan.requirement} from {where}", tail,
                         "Check the connection and the free space; choose the index with --torch-index URL (or "
                         f"{INDEX_ENV}; 'pip' for pip's own), or --cpu for the CPU build", env_dir)
    return _installed_version(python, "torch") or plan.requirement


def step_packages(env_dir: Path, requirements: Path, channel: Channel) -> None:
    command = [str(env_python(env_dir)), "-m", "pip", "install", "-r", str(requirements)]
    status, tail, _ = run_logged(command, channel)
    if status != 0:
        raise StepFailed("packages", f"pip could not install the engine's packages ({requirements.name})", tail,
                         "Check the connection and the free space", env_dir)


def step_check(env_dir: Path, channel: Channel) -> dict:
    status, tail, out = run_logged([str(env_python(env_dir)), "-m", "engine", "check"], channel, cwd=ROOT,
                                   keep_stdout=True)
    try:
        report = json.loads(out) if status == 0 else None
    except json.JSONDecodeError:
        report = None
    if report is None:
        raise StepFailed("check", f"the engine's check did not run in the new environment (exit status {status})",
                         tail, "Look at the log above", env_dir)
    missing = sorted(name for name, version in report.get("packages", {}).items() if version is None)
    if missing:
        raise StepFailed("check", f"the environment still lacks {', '.join(missing)}", tail,
                         "Check the log above", env_dir)
    return report


def setup(env_dir, channel: Channel, cpu: bool = False, torch_index: str | None = None,
          requirements=REQUIREMENTS) -> int:
    """Make or repair the engine's environment in ``env_dir``; returns the exit status. Every outcome ends with
    a ``done`` or an ``error`` event."""
    started = time.monotonic()
    env_dir = Path(env_dir).expanduser().absolute()
    requirements = Path(requirements).absolute()

    def begin(step: int) -> None:
        if channel.cancel_requested:
            raise cancelled()
        channel.emit("progress", stage="setup", step=step, total=len(STEPS), eta_s=None,
                     phase=STEPS[step] if step < len(STEPS) else "done")

    try:
        if sys.version_info < MIN_PYTHON:
            raise EngineError("setup_failed", f"setup needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; this "
                                              f"is {sys.version.split()[0]} ({sys.executable}): run it with another")
        if not requirements.is_file():
            raise EngineError("setup_failed", f"{requirements} is missing: the engine's folder is incomplete; "
                                              "install the extension again")
        requirement = torch_requirement(requirements)
        channel.log(f"setting up the engine's environment in {env_dir} with Python {sys.version.split()[0]}")
        begin(0)
        step_venv(env_dir, channel)
        begin(1)
        driver = None if cpu or torch_index else nvidia_driver()
        plan = plan_torch(requirement, cpu, torch_index, driver)
        torch = step_torch(env_dir, plan, channel)
        begin(2)
        step_packages(env_dir, requirements, channel)
        begin(3)
        report = step_check(env_dir, channel)
        if plan.build and plan.build.startswith("cu") and not report.get("gpu", {}).get("cuda"):
            channel.warning("setup_no_cuda", f"torch {torch} sees no CUDA device "
                                             f"({report.get('gpu', {}).get('why')}): update the NVIDIA driver, or "
                                             f"choose another build with --torch-index (or {INDEX_ENV})")
        begin(len(STEPS))
        channel.emit("done", outputs={"python": str(env_python(env_dir))}, folder=str(env_dir), torch=torch,
                     torch_index=plan.index, check=report, seconds=round(time.monotonic() - started, 2))
        return 0
    except EngineError as err:
        channel.log(f"error [{err.code}]: {err}")
        channel.emit("error", code=err.code, message=str(err))
        return EXIT_CODES[err.code]
    except OSError as err:
        message = f"setup failed: {err}; run setup again once the cause is fixed (what is installed is kept)"
        channel.log(f"error [setup_failed]: {message}")
        channel.emit("error", code="setup_failed", message=message)
        return EXIT_CODES["setup_failed"]
    except Exception as err:  # a bug: say so on the protocol too, then keep the traceback on stderr
        channel.emit("error", code="internal", message=f"internal error: {err!r}")
        raise


def main(args) -> int:
    channel = Channel()
    channel.listen_for_cancel()
    # The client's terminate (and on Windows its Ctrl+Break) cancel too: pip, in its own group, goes with setup.
    for name in ("SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: channel.request_cancel())
    try:
        return setup(args.env_dir, channel, cpu=args.cpu, torch_index=args.torch_index,
                     requirements=args.requirements)
    finally:
        channel.close()
