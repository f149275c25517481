# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine run JOB_DIR`` | ``check [JOB_DIR]`` | ``make-tiny-models DIR`` |
``preview VIDEO -o SHEET.png`` | ``models sets`` | ``models find [DIR…]`` | ``models fetch SET DIR`` |
``setup ENV_DIR [--cpu] [--torch-index URL]``

Each command imports what it needs when it runs: ``setup`` makes the environment torch, numpy and PyAV come in,
so this module and its path import the standard library only (any Python 3.11 or newer runs it)."""

import argparse
import json
import os
import sys

from .protocol_io import Channel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Equi360 generation engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="run the job in JOB_DIR; JSON events on stdout")
    run_cmd.add_argument("job_dir")
    check_cmd = sub.add_parser("check", help="print what is present and missing, as JSON")
    check_cmd.add_argument("job_dir", nargs="?", help="also check the model files this job names")
    preview_cmd = sub.add_parser("preview", help="write the preview sheet of a 360° video; prints its path as JSON")
    preview_cmd.add_argument("video")
    preview_cmd.add_argument("-o", "--output", required=True, help="the sheet (.png)")
    preview_cmd.add_argument("--frame", type=int, help="which frame, from 0; past the end: the last (default: the "
                                                       "middle one)")
    preview_cmd.add_argument("--job", metavar="JOB_DIR", help="its job folder, for the plate outline")
    tiny_cmd = sub.add_parser("make-tiny-models", help="write a tiny random-weight LTX-2.3 model set (tests, demo)")
    tiny_cmd.add_argument("dir")
    models_cmd = sub.add_parser("models", help="the model files: the sets to download, find them, fetch them")
    models_sub = models_cmd.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("sets", help="print the downloadable model sets, as JSON")
    find_cmd = models_sub.add_parser("find", help="print the complete model sets on this machine, as JSON")
    find_cmd.add_argument("dirs", nargs="*", metavar="DIR", help="also search these folders (recursively)")
    from .model_sets import SETS
    fetch_cmd = models_sub.add_parser("fetch", help="download a model set into DIR; JSON events on stdout")
    fetch_cmd.add_argument("set", choices=sorted(SETS))
    fetch_cmd.add_argument("dir")
    from .setup import INDEX_ENV, PIP_INDEX, REQUIREMENTS
    setup_cmd = sub.add_parser("setup", help="make or repair the engine's own Python environment in ENV_DIR (torch, "
                                             "diffusers, …; nothing else); JSON events on stdout")
    setup_cmd.add_argument("env_dir", metavar="ENV_DIR")
    setup_cmd.add_argument("--cpu", action="store_true", help="the CPU build of torch, even where an NVIDIA driver is")
    setup_cmd.add_argument("--torch-index", metavar="URL", default=os.environ.get(INDEX_ENV) or None,
                           help=f"the package index torch comes from ('{PIP_INDEX}': pip's own; default: PyTorch's "
                                f"index for this machine's build; env {INDEX_ENV})")
    setup_cmd.add_argument("--requirements", metavar="FILE", default=str(REQUIREMENTS),
                           help="the engine's requirements (default: requirements-engine.txt beside the engine)")
    args = parser.parse_args(argv)
    if args.command == "models":
        return models(args)
    if args.command == "setup":
        from .setup import main as setup_main
        return setup_main(args)
    if args.command == "check":
        from .check import check
        print(check(args.job_dir))
        return 0
    if args.command == "preview":
        from .preview import preview
        return preview(args.video, args.output, args.frame, args.job)
    if args.command == "make-tiny-models":
        from .tiny import make_tiny_models
        print(json.dumps(make_tiny_models(args.dir), indent=2))
        return 0
    from .runner import run
    channel = Channel()
    channel.listen_for_cancel()
    try:
        return run(args.job_dir, channel)
    finally:
        channel.close()


def models(args) -> int:
    if args.models_command == "sets":
        from .model_sets import catalog
        print(json.dumps(catalog(), indent=2))
        return 0
    if args.models_command == "find":
        from .find import find
        print(json.dumps(find(args.dirs), indent=2, ensure_ascii=False))
        return 0
    from .fetch import fetch
    channel = Channel()
    channel.listen_for_cancel()
    try:
        return fetch(args.set, args.dir, channel)
    finally:
        channel.close()


sys.exit(main())
