// SPDX-License-Identifier: GPL-3.0-or-later
//
// Equi360 job type for Flamenco: one task per shot, each running the Equi360 engine on that shot's job
// folder (python -m engine run JOB_DIR), which makes all of the shot's windows in order. Copy this file
// into the `scripts/` folder next to `flamenco-manager` and restart the manager; the job type is named
// after the file: "equi360".
//
// The job folders are given as one root plus names under it, not as a list of full paths: job settings
// cannot be arrays, and the manager's two-way variables only rewrite the start of a setting, so a root
// like /mnt/farm/equi360 becomes {farm}/equi360 and then each worker's own path for it.

const JOB_TYPE = {
    label: "Equi360",
    settings: [
        { key: "job_root", type: "string", subtype: "dir_path", required: true,
          description: "Folder on the farm's shared storage that holds the shots' job folders" },
        { key: "shots", type: "string", required: true,
          description: "The shots' job folders, relative to job_root, one per line" },
        { key: "engine_python", type: "string", default: "{engine_python}", visible: "submission",
          description: "The Python of the engine's environment on the workers (a manager variable by default)" },
        { key: "engine_root", type: "string", default: "{engine_root}", visible: "submission",
          description: "The folder on the workers that holds engine/ and blender_equi360/ (a manager variable "
                       + "by default)" },
    ],
};

const TASK_TYPE = "equi360"; // workers list it in task_types to take these tasks (GPU machines)

// The worker's `exec` command has no working directory or environment, so `-m engine` would not find the
// engine: this puts engine_root on sys.path and runs the engine's __main__ with the remaining arguments.
// (No curly braces: the manager would read {...} as a variable.)
const BOOT = [
    "import os, runpy, sys",
    "root = sys.argv.pop(1)",
    "os.path.isfile(os.path.join(root, 'engine', '__main__.py')) or sys.exit('equi360: no engine in %r: set "
        + "engine_root to the folder that holds engine/ and blender_equi360/' % root)",
    "sys.path.insert(0, root)",
    "runpy.run_module('engine', run_name='__main__', alter_sys=True)",
].join("; ");

function compileJob(job) {
    const root = setting(job, "job_root").replace(/[\\/]+$/, "");
    const python = setting(job, "engine_python");
    const engineRoot = setting(job, "engine_root");
    const shots = shotList(setting(job, "shots"));
    if (!root) throw "job_root is empty: give the folder on the farm's shared storage that holds the job folders";
    if (!isAbsolute(root)) throw `job_root must be an absolute path on the shared storage, not "${root}"`;
    if (!python) throw "engine_python is empty: give the engine's Python on the workers, e.g. {engine_python}";
    if (!isAbsolute(engineRoot)) throw `engine_root must be an absolute path on the workers, not "${engineRoot}"`;
    if (shots.length === 0) throw "shots is empty: list the job folders to convert, one per line";
    shots.forEach((shot, i) => {
        if (isAbsolute(shot) || shot.split(/[\\/]/).includes(".."))
            throw `shot "${shot}" must name a folder inside job_root (relative, without "..")`;
        if (shots.indexOf(shot) !== i) throw `shot "${shot}" is listed twice`;
    });

    for (const shot of shots) {
        const task = author.Task(`equi360-${shot}`, TASK_TYPE);
        task.addCommand(author.Command("exec", {
            exe: python,
            args: ["-u", "-c", BOOT, engineRoot, "run", `${root}/${shot}`],
        }));
        job.addTask(task);
    }
}

// A setting as submitted, or its JOB_TYPE default (the manager does not fill in defaults).
function setting(job, key) {
    const value = job.settings[key];
    if (value !== undefined && value !== null) return String(value).trim();
    const known = JOB_TYPE.settings.find((s) => s.key === key);
    return known.default === undefined ? "" : String(known.default);
}

function shotList(text) {
    return text.split("\n").map((line) => line.trim().replace(/[\\/]+$/, "")).filter((line) => line);
}

// POSIX /x, Windows C:\x or C:/x, UNC \\server\share, or a manager variable such as {farm}/x.
function isAbsolute(p) {
    return /^(\/|[A-Za-z]:[\\/]|\\\\|\{[^}]+\})/.test(p);
}
