# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m engine check``: what this engine environment has and lacks, as JSON."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import fields
from pathlib import Path

from blender_equi360.jobs.errors import Equi360Error
from blender_equi360.jobs.job import ModelFiles, job_path, load_job

from .protocol_io import EngineError
from .text_encoder import check_text_encoder
from .weights import check_checkpoint, check_lora

CHECKS = {"checkpoint": check_checkpoint, "text_encoder": check_text_encoder, "ic_lora": check_lora,
          "distilled_lora": lambda p: check_lora(p, "distilled LoRA")}

PACKAGES = ("torch", "diffusers", "transformers", "peft", "safetensors", "av", "numpy")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> dict:
    try:
        import torch
    except ImportError:
        return {"cuda": False, "why": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"cuda": False, "why": f"torch {torch.__version__} sees no CUDA device"}
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info(0)
    return {"cuda": True, "name": props.name, "memory_gb": round(total / 2**30, 1),
            "free_gb": round(free / 2**30, 1), "capability": f"{props.major}.{props.minor}"}


def _model_files(job_dir) -> dict:
    try:
        models = load_job(job_dir).models
    except Equi360Error as err:
        return {"error": str(err)}
    report = {}
    for f in fields(ModelFiles):
        name = getattr(models, f.name)
        if name is None:
            report[f.name] = {"configured": False}
            continue
        path = job_path(job_dir, name)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else (
            path.stat().st_size if path.exists() else None)
        entry = {"configured": True, "path": str(path), "present": path.exists(), "bytes": size}
        try:
            CHECKS[f.name](path)
            entry["ok"] = True
        except EngineError as err:
            entry.update(ok=False, code=err.code, message=str(err))
        report[f.name] = entry
    return report


def check(job_dir=None) -> str:
    report = {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "gpu": _gpu(),
    }
    missing = [name for name, v in report["packages"].items() if v is None]
    if job_dir is not None:
        report["models"] = _model_files(Path(job_dir))
        missing += [f"model:{k}" for k, v in report["models"].items() if isinstance(v, dict)
                    and v.get("configured") and not v.get("present")]
    if not report["gpu"]["cuda"]:
        missing.append("cuda")
    report["missing"] = missing
    report["ready_for_ltx"] = not missing and job_dir is not None and all(
        v.get("ok") for k, v in report["models"].items() if k != "distilled_lora")
    return json.dumps(report, indent=2)
