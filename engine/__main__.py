# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine run JOB_DIR`` | ``check [JOB_DIR]`` | ``make-tiny-models DIR`` |
``models sets`` | ``models find [DIR…]`` | ``models fetch SET DIR``"""

import argparse
import json
import sys

from .check import check
from .protocol_io import Channel
from .runner import run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Equi360 generation engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="run the job in JOB_DIR; JSON events on stdout")
    run_cmd.add_argument("job_dir")
    check_cmd = sub.add_parser("check", help="print what is present and missing, as JSON")
    check_cmd.add_argument("job_dir", nargs="?", help="also check the model files this job names")
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
    args = parser.parse_args(argv)
    if args.command == "models":
        return models(args)
    if args.command == "check":
        print(check(args.job_dir))
        return 0
    if args.command == "make-tiny-models":
        from .tiny import make_tiny_models
        print(json.dumps(make_tiny_models(args.dir), indent=2))
        return 0
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
