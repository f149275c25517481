// SPDX-License-Identifier: GPL-3.0-or-later
//
// Runs a Flamenco job compiler script under Node the way Flamenco Manager runs it under goja
// (internal/manager/job_compilers: scripts.go, author.go, job_compilers.go), for the tests.
//
//     node flamenco_harness.js SCRIPT.js < {"name": ..., "settings": {...}, "metadata": {...}}
//
// Prints one JSON object: {"jobType": JOB_TYPE, "tasks": [...], "log": [...]} or, when compileJob
// throws (the manager then refuses the job with HTTP 400 and this message), {"error": "...", "log": [...]}.
// Only what the manager gives scripts and the script under test uses is provided: a script that reaches
// for anything else fails here as it would there.

"use strict";
const crypto = require("crypto");
const fs = require("fs");
const vm = require("vm");

const log = [];

// author.Task / author.Command (author.go): Go structs, exposed with lower-cased names. Task trims its
// arguments and refuses empty ones; AddTask and AddCommand append copies, so a task changed after
// job.addTask(task) is not changed in the job.
function Task(name, taskType) {
    name = String(name).trim();
    taskType = String(taskType).trim();
    if (!name) throw new Error("author.Task(name, type): name is required");
    if (!taskType) throw new Error("author.Task(name, type): type is required");
    return {
        uuid: crypto.randomUUID(), name, type: taskType, priority: 50, commands: [], dependencies: [],
        addCommand(command) { this.commands.push(copy(command)); },
        addDependency(task) { this.dependencies.push(task); },
    };
}

function Command(name, parameters) {
    return { name, parameters };
}

function copy(value) {
    return JSON.parse(JSON.stringify(value));
}

function taskRecord(task) {  // what the manager stores: dependencies by UUID
    return { ...copy(task), dependencies: task.dependencies.map((d) => d.uuid) };
}

const submitted = JSON.parse(fs.readFileSync(0, "utf8"));
const job = {  // AuthoredJob (author.go)
    jobID: crypto.randomUUID(), name: submitted.name || "", jobType: submitted.type || "", priority: 50,
    status: "under-construction", created: new Date(), settings: { ...(submitted.settings || {}) },
    metadata: { ...(submitted.metadata || {}) }, storage: { shamanCheckoutID: "" }, tasks: [],
    addTask(task) { this.tasks.push(taskRecord(task)); },
};

const context = vm.createContext({
    author: { Task, Command },
    print: (...args) => log.push(["print", args.map(String).join(" ")]),
    alert: (...args) => log.push(["alert", args.map(String).join(" ")]),
});
const script = process.argv[2];
// goja.Compile(filename, source, strict=true): scripts run in strict mode.
vm.runInContext(`"use strict"; ${fs.readFileSync(script, "utf8")}`, context, { filename: script });
const { JOB_TYPE, compileJob } = vm.runInContext("({ JOB_TYPE, compileJob })", context);

let result;
try {
    compileJob(job);
    result = { jobType: JOB_TYPE, tasks: job.tasks, log };
} catch (err) {
    result = { error: String(err), log };  // a thrown string, or "TypeError: ..."
}
process.stdout.write(JSON.stringify(result));
