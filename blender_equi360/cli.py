"""``python -m blender_equi360``: command-line entry points of the core."""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time

from .geometry.camera import Camera
from .jobs.canvas import CanvasSize
from .jobs.errors import Equi360Error
from .jobs.lora_versions import DEFAULT_LORA_VERSION, LORA_VERSIONS
from .jobs.remote import DEFAULT_JOBS, DEFAULT_PYTHON, DEFAULT_ROOT
from .media.video import DEFAULT_LOSSLESS_CODEC, LOSSLESS_CODECS
from .stages.reference import CROPS, DEFAULT_FRAMES, ReferenceSettings, build_reference

EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_BAD_INPUT = 3
EXIT_IO_ERROR = 4
EXIT_INTERRUPTED = 130


class ProgressBar:
    """A one-line bar on stderr when it is a terminal; a line every 10 % otherwise (logs, CI)."""

    def __init__(self, label: str, stream=sys.stderr, width: int = 30):
        self.label, self.stream, self.width = label, stream, width
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_decile = -1

    def __call__(self, done: int, total: int | None) -> None:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        if total:
            filled = int(self.width * done / total)
            eta = (total - done) / rate if rate else 0.0
            text = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} frames "
                    f"{rate:5.1f} fps ETA {eta:4.0f} s")
            decile = 10 * done // total
        else:
            text, decile = f"{self.label} {done} frames {rate:5.1f} fps", self._last_decile
        if self.tty:
            self.stream.write("\r" + text + ("\n" if total and done >= total else ""))
            self.stream.flush()
        elif decile != self._last_decile:
            self.stream.write(text + "\n")
            self._last_decile = decile


def _frames(text: str) -> int | None:
    return None if text == "all" else int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m blender_equi360",
                                     description="Equi360: flat widescreen footage → 360° equirect video.")
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="build the masked equirect reference video from a flat clip",
                         description="Project a flat clip onto a level equirect canvas (unknown region black) "
                                     "and write the reference video and its mask, both lossless .mkv.")
    ref.add_argument("input", help="the flat clip (any video PyAV/FFmpeg reads)")
    ref.add_argument("-o", "--output", required=True, help="reference video to write (.mkv)")
    ref.add_argument("--mask", help="mask video to write (.mkv, white = to generate; default: OUTPUT_mask.mkv)")
    lens = ref.add_mutually_exclusive_group()
    lens.add_argument("--hfov", type=float, help="horizontal FOV of the picture in degrees (default 100)")
    lens.add_argument("--focal", type=float, metavar="MM", help="focal length in mm (with --sensor-width)")
    ref.add_argument("--sensor-width", type=float, default=36.0, metavar="MM",
                     help="sensor width in mm covered by the picture (default 36, with --focal)")
    ref.add_argument("--yaw", type=float, default=0.0, help="camera heading in degrees, + = right (default 0)")
    ref.add_argument("--pitch", type=float, default=0.0, help="camera tilt in degrees, + = up (default 0)")
    ref.add_argument("--roll", type=float, default=0.0,
                     help="camera roll in degrees, + = counter-clockwise seen from behind (default 0)")
    ref.add_argument("--lora-version", choices=list(LORA_VERSIONS), default=DEFAULT_LORA_VERSION,
                     help="the VR-360 LoRA the reference is for: its canvas, crop and sweet spot (default "
                          f"{DEFAULT_LORA_VERSION}: " + "; ".join(f"{n}: {v.canvas}, crop {v.crop}"
                                                                  for n, v in LORA_VERSIONS.items()) + ")")
    ref.add_argument("--crop", choices=CROPS, default=None,
                     help="crop to 2.39:1 keeping these rows, or none (default: the LoRA version's)")
    ref.add_argument("--size", default=None,
                     help="canvas WIDTHxHEIGHT, 2:1, multiples of 32 (default: the LoRA version's)")
    ref.add_argument("--frames", type=_frames, default=None,
                     help=f"output frames, 8k+1 (e.g. {DEFAULT_FRAMES}: one model window); default 'all': the whole "
                          "clip from --start, padded to 8k+1")
    ref.add_argument("--fps", type=float, default=None,
                     help="output frame rate (default: the clip's own, so the 360° video keeps its timing)")
    ref.add_argument("--start", type=float, default=0.0, metavar="SECONDS", help="where in the clip to start")
    ref.add_argument("--feather", type=float, default=0.0, metavar="PX", help="inward feather of the plate edge")
    ref.add_argument("--no-letterbox", action="store_true", help="don't detect and remove letterbox bars")
    ref.add_argument("--codec", choices=sorted(LOSSLESS_CODECS), default=DEFAULT_LOSSLESS_CODEC, help="lossless codec")
    ref.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    ref.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sc = sub.add_parser("score", help="measure a 360° output: plate round trip, seam, poles, tone, flicker",
                        description="Score a 360° output against its source clip and its job's reference.")
    sc.add_argument("output", help="the 360° video to score")
    sc.add_argument("--source", required=True, help="the flat clip the reference was built from")
    sc.add_argument("--job", required=True, metavar="JOB_DIR", help="the job folder (job.json, the reference)")
    sc.add_argument("--json", action="store_true", help="print the report as JSON")
    bt = sub.add_parser("batch", help="run job folders through the engine, one after the other",
                        description="Run each job folder through the engine; finished jobs are skipped, so "
                                    "running the same batch again continues where it stopped.")
    bt.add_argument("job_dirs", nargs="+", metavar="JOB_DIR")
    bt.add_argument("--python", default=sys.executable,
                    help="the engine's Python (default: this one)")
    rm = bt.add_argument_group("the engine on another machine, over SSH (OpenSSH's ssh, key authentication only)")
    rm.add_argument("--remote", metavar="USER@HOST[:PORT]",
                    help="run each job there: its source clip (the span it uses) and job.json are uploaded, the "
                         "result downloaded into the job folder")
    rm.add_argument("--identity", metavar="FILE", help="the private key the remote machine accepts (default: ssh's)")
    rm.add_argument("--remote-python", metavar="PATH", default=DEFAULT_PYTHON,
                    help=f"the engine's Python there (default {DEFAULT_PYTHON})")
    rm.add_argument("--remote-root", metavar="DIR", default=DEFAULT_ROOT,
                    help=f"the folder there that holds engine/ and blender_equi360/ (default {DEFAULT_ROOT})")
    rm.add_argument("--remote-jobs", metavar="DIR", default=DEFAULT_JOBS,
                    help=f"where the job folders go there (default {DEFAULT_JOBS})")
    rm.add_argument("--known-hosts", metavar="FILE",
                    help="the file ssh records and checks host keys in (default: the user's own)")
    pv = sub.add_parser("preview", help="one PNG: the equirect frame and six views around, the plate outlined",
                        description="Write a preview sheet of a 360° video: the equirect frame, and 90° views "
                                    "front, left, right, back, up and down, with the plate outlined.")
    pv.add_argument("video", help="the 360° (equirect) video")
    pv.add_argument("-o", "--output", required=True, help="the sheet to write (.png)")
    pv.add_argument("--frame", type=int, help="which frame, from 0 (default: the middle one)")
    pv.add_argument("--job", metavar="JOB_DIR", help="its job folder, for the plate outline (default: the "
                                                      "video's folder when it holds job.json)")
    pv.add_argument("--view-size", type=int, default=480, metavar="PX", help="each view's size (default 480)")
    return parser


def _camera(args) -> Camera:
    angles = dict(yaw_deg=args.yaw, pitch_deg=args.pitch, roll_deg=args.roll)
    if args.focal is not None:
        return Camera.from_focal_length(args.focal, args.sensor_width, **angles)
    return Camera(hfov_deg=100.0 if args.hfov is None else args.hfov, **angles)


def _reference(args) -> int:
    settings = ReferenceSettings(camera=_camera(args), lora_version=args.lora_version, crop=args.crop,
                                 size=CanvasSize.parse(args.size) if args.size else None,
                                 frames=args.frames, fps=args.fps, start_s=args.start, feather_px=args.feather,
                                 detect_letterbox=not args.no_letterbox, codec=args.codec)
    progress = None if args.quiet else ProgressBar("reference")
    result = build_reference(args.input, args.output, args.mask, settings, progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"wrote {result.video} and {result.mask}: {result.frames_written} frames, "
              f"{settings.size}, {result.settings.fps:g} fps; plate {result.window.width}x{result.window.height} "
              f"→ {result.footprint_fraction:.1%} of the canvas")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _score(args) -> int:
    from .quality.score import format_report, score
    report = score(args.output, args.source, args.job)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _batch(args) -> int:
    from .jobs.batch import run_batch
    remote = prepare_source = None
    if args.remote:
        from .jobs.remote import RemoteHost
        from .media.remux import span_for_upload
        remote = RemoteHost(args.remote, python=args.remote_python, root=args.remote_root, jobs=args.remote_jobs,
                            identity=args.identity, known_hosts=args.known_hosts)
        prepare_source = span_for_upload
    outcomes = run_batch(args.job_dirs, args.python, log=lambda line: print(line, flush=True), remote=remote,
                         prepare_source=prepare_source)
    counts = {status: sum(o.status == status for o in outcomes) for status in ("done", "skipped", "failed")}
    print(f"batch: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
          f"{', cancelled' if any(o.status == 'cancelled' for o in outcomes) else ''}")
    if any(o.status == "cancelled" for o in outcomes):
        return EXIT_INTERRUPTED
    return 1 if counts["failed"] else 0


def _preview(args) -> int:
    from .quality.preview import preview_sheet
    print(f"wrote {preview_sheet(args.video, args.output, args.frame, args.job, args.view_size)}")
    return 0


def _os_error(err: OSError) -> str:
    """What the system refused, in the user's terms."""
    where = err.filename or "a file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no room left to write {where}: free some space and run it again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not allowed to write {where} ({err.strerror}): choose a folder you can write to"
    return f"{where}: {err.strerror or err}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"reference": _reference, "score": _score, "batch": _batch, "preview": _preview}[args.command](args)
    except Equi360Error as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # disk full, permissions changing under us, ...
        print(f"error: {_os_error(err)}", file=sys.stderr)
        return EXIT_IO_ERROR
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
