"""360° metadata in MP4: what makes players, headsets and YouTube show the file as a sphere.

Two generations of Google's Spherical Video metadata are written, since players read one or the other:

- **V1**: a ``uuid`` box (``ffcc8263-f855-4a93-8814-587a02521fdd``) in the video track holding GSpherical
  XML (``ProjectionType`` equirectangular);
- **V2**: ``st3d`` (stereo mode: mono) and ``sv3d`` (``svhd`` + ``proj`` with ``prhd`` pose and ``equi``
  bounds) inside the video sample entry (``avc1``/``hvc1``).

ffmpeg reads both but cannot write them from scratch, so this small box writer adds them to a finished
MP4 without touching the coded video: it rebuilds ``moov`` and, when ``moov`` comes before the media
data, moves the chunk offsets by the bytes it added. :func:`read_spherical` parses them back.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from ..jobs.errors import Equi360Error

SPHERICAL_UUID = uuid.UUID("ffcc8263-f855-4a93-8814-587a02521fdd").bytes
GSPHERICAL_NS = "http://ns.google.com/videos/1.0/spherical/"
SOFTWARE = "Equi360"
CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"sv3d", b"proj"}
VISUAL_ENTRY_FIELDS = 78   # the fixed part of a VisualSampleEntry before its child boxes
VIDEO_ENTRIES = {b"avc1", b"avc3", b"hvc1", b"hev1", b"av01", b"vp09", b"mp4v"}
COPY_CHUNK = 1 << 22


@dataclass
class Box:
    kind: bytes
    payload: bytes = b""                        # a leaf's bytes, or a container's fixed fields before its children
    children: list["Box"] | None = None         # None: a leaf

    def to_bytes(self) -> bytes:
        body = self.payload + b"".join(c.to_bytes() for c in self.children or ())
        if len(body) + 8 > 0xFFFFFFFF:
            return struct.pack(">I4sQ", 1, self.kind, len(body) + 16) + body
        return struct.pack(">I4s", len(body) + 8, self.kind) + body

    def find(self, kind: bytes) -> "Box | None":
        return next((c for c in self.children or () if c.kind == kind), None)

    def walk(self):
        yield self
        for child in self.children or ():
            yield from child.walk()


def _parse(data: bytes, start: int = 0, end: int | None = None, parent: bytes = b"") -> list[Box]:
    end = len(data) if end is None else end
    boxes, at = [], start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise Equi360Error(f"damaged MP4: box {kind!r} at byte {at} runs past its parent")
        boxes.append(_box(data, kind, at + header, at + size, parent))
        at += size
    return boxes


def _box(data: bytes, kind: bytes, start: int, end: int, parent: bytes) -> Box:
    if kind in CONTAINERS:
        return Box(kind, b"", _parse(data, start, end, kind))
    if kind == b"stsd":  # FullBox header and entry count, then the sample entries
        return Box(kind, data[start:start + 8], _parse(data, start + 8, end, kind))
    if parent == b"stsd" and kind in VIDEO_ENTRIES:
        fixed = start + VISUAL_ENTRY_FIELDS
        return Box(kind, data[start:fixed], _parse(data, fixed, end, kind))
    return Box(kind, data[start:end])


def _full_box(kind: bytes, body: bytes, version: int = 0, flags: int = 0) -> Box:
    return Box(kind, struct.pack(">I", (version << 24) | flags) + body)


def _v1_xml() -> bytes:
    tags = {"Spherical": "true", "Stitched": "true", "StitchingSoftware": SOFTWARE,
            "ProjectionType": "equirectangular"}
    inner = "".join(f"<GSpherical:{k}>{v}</GSpherical:{k}>" for k, v in tags.items())
    return ('<?xml version="1.0"?><rdf:SphericalVideo xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            f'xmlns:GSpherical="{GSPHERICAL_NS}">{inner}</rdf:SphericalVideo>').encode()


def _v2_boxes(yaw_deg: float) -> list[Box]:
    stereo = _full_box(b"st3d", struct.pack(">B", 0))  # 0: monoscopic
    header = _full_box(b"svhd", SOFTWARE.encode() + b"\0")
    pose = _full_box(b"prhd", struct.pack(">iii", round(yaw_deg * 65536), 0, 0))  # 16.16 degrees
    bounds = _full_box(b"equi", struct.pack(">IIII", 0, 0, 0, 0))  # the whole sphere, no crop
    return [stereo, Box(b"sv3d", b"", [header, Box(b"proj", b"", [pose, bounds])])]


def _video_track(moov: Box) -> Box:
    for trak in moov.children:
        if trak.kind != b"trak":
            continue
        handler = trak.find(b"mdia") and trak.find(b"mdia").find(b"hdlr")
        if handler is not None and handler.payload[8:12] == b"vide":
            return trak
    raise Equi360Error("the MP4 has no video track to mark as 360°")


def _top_level(path: Path) -> list[tuple[bytes, int, int]]:
    """(kind, offset, size) of each top-level box, reading headers only."""
    boxes, size_total = [], path.stat().st_size
    with open(path, "rb") as f:
        at = 0
        while at + 8 <= size_total:
            f.seek(at)
            size, kind = struct.unpack(">I4s", f.read(8))
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
            elif size == 0:
                size = size_total - at
            if size < 8:
                raise Equi360Error(f"{path}: damaged MP4 (box {kind!r} at byte {at})")
            boxes.append((kind, at, size))
            at += size
    return boxes


def inject_spherical(path, yaw_deg: float = 0.0) -> None:
    """Mark the MP4 ``path`` as a monoscopic equirectangular 360° video (V1 and V2 metadata), in place
    and atomically. Any spherical metadata already there is replaced."""
    path = Path(path)
    top = _top_level(path)
    moov_at = next(((at, size) for kind, at, size in top if kind == b"moov"), None)
    if moov_at is None:
        raise Equi360Error(f"{path}: not an MP4 with a movie header (moov)")
    with open(path, "rb") as f:
        f.seek(moov_at[0])
        (moov,) = _parse(f.read(moov_at[1]))
    trak = _video_track(moov)
    trak.children = [c for c in trak.children if not (c.kind == b"uuid" and c.payload[:16] == SPHERICAL_UUID)]
    trak.children.append(Box(b"uuid", SPHERICAL_UUID + _v1_xml()))
    stsd = trak.find(b"mdia").find(b"minf").find(b"stbl").find(b"stsd")
    entry = next((e for e in stsd.children if e.children is not None), None)
    if entry is None:
        raise Equi360Error(f"{path}: the video track's codec ({stsd.children[0].kind.decode(errors='replace')}) "
                           "cannot carry 360° metadata")
    entry.children = [c for c in entry.children if c.kind not in (b"st3d", b"sv3d")] + _v2_boxes(yaw_deg)

    new_moov = moov.to_bytes()
    delta = len(new_moov) - moov_at[1]
    media_after = any(kind == b"mdat" and at > moov_at[0] for kind, at, _ in top)
    if delta and media_after:  # the media moves by delta: so must every chunk offset pointing into it
        _shift_chunk_offsets(moov, delta)
        new_moov = moov.to_bytes()
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            _copy(src, dst, 0, moov_at[0])
            dst.write(new_moov)
            _copy(src, dst, moov_at[0] + moov_at[1], path.stat().st_size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shift_chunk_offsets(moov: Box, delta: int) -> None:
    for box in moov.walk():
        if box.kind in (b"stco", b"co64"):
            count = struct.unpack_from(">I", box.payload, 4)[0]
            fmt = ">%d%s" % (count, "I" if box.kind == b"stco" else "Q")
            offsets = [o + delta for o in struct.unpack_from(fmt, box.payload, 8)]
            if box.kind == b"stco" and max(offsets, default=0) > 0xFFFFFFFF:
                raise Equi360Error("the MP4 is too large to take 360° metadata in place (32-bit chunk offsets)")
            box.payload = box.payload[:8] + struct.pack(fmt, *offsets)


def _copy(src, dst, start: int, end: int) -> None:
    src.seek(start)
    left = end - start
    while left > 0:
        chunk = src.read(min(COPY_CHUNK, left))
        if not chunk:
            raise Equi360Error("the MP4 ended early while adding 360° metadata")
        dst.write(chunk)
        left -= len(chunk)


@dataclass
class SphericalInfo:
    """What :func:`read_spherical` found: each field None when absent."""
    v1: dict = field(default_factory=dict)    # GSpherical tag → text
    stereo_mode: int | None = None            # st3d: 0 mono, 1 top-bottom, 2 left-right
    projection: str | None = None             # sv3d: "equirectangular" (equi) or "cubemap" (cbmp)
    pose_deg: tuple[float, float, float] | None = None  # yaw, pitch, roll
    bounds: tuple[int, int, int, int] | None = None     # equi: top, bottom, left, right (0.32 fixed)
    metadata_source: str | None = None


def read_spherical(path) -> SphericalInfo:
    """The spherical metadata of the MP4 ``path``'s video track (our own parser, used to check the writer)."""
    path = Path(path)
    info = SphericalInfo()
    moov_at = next(((at, size) for kind, at, size in _top_level(path) if kind == b"moov"), None)
    if moov_at is None:
        raise Equi360Error(f"{path}: not an MP4 with a movie header (moov)")
    with open(path, "rb") as f:
        f.seek(moov_at[0])
        (moov,) = _parse(f.read(moov_at[1]))
    for box in _video_track(moov).walk():
        if box.kind == b"uuid" and box.payload[:16] == SPHERICAL_UUID:
            root = ElementTree.fromstring(box.payload[16:])
            info.v1 = {el.tag.split("}")[1]: el.text for el in root if el.tag.startswith("{" + GSPHERICAL_NS)}
        elif box.kind == b"st3d":
            info.stereo_mode = box.payload[4]
        elif box.kind == b"svhd":
            info.metadata_source = box.payload[4:].rstrip(b"\0").decode()
        elif box.kind == b"prhd":
            info.pose_deg = tuple(v / 65536 for v in struct.unpack_from(">iii", box.payload, 4))
        elif box.kind == b"equi":
            info.projection, info.bounds = "equirectangular", struct.unpack_from(">IIII", box.payload, 4)
        elif box.kind == b"cbmp":
            info.projection = "cubemap"
    return info
