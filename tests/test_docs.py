"""What the README and the Makefile tell users still matches the code: a rename fails here first, not for a user.

The Makefile's inline Python (the demos' job.json) runs against the current API; every source file the README and
docs/ name exists.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def inline_snippets():
    snippets, target = [], None
    for line in (ROOT / "Makefile").read_text().replace("\\\n", "").splitlines():
        if re.match(r"^[\w.$()/-]+:", line):
            target = line.split(":")[0]
        elif (code := re.search(r'\$\(PY\) -c "(.*)"', line)):
            snippets.append((target, code.group(1)))
    return snippets


@pytest.mark.parametrize("target,code", inline_snippets(), ids=[t for t, _ in inline_snippets()])
def test_each_inline_snippet_writes_a_job_the_engine_accepts(tmp_path, target, code):
    (tmp_path / "out" / target).mkdir(parents=True)  # made by the target's earlier steps
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    (job_file,) = tmp_path.glob("out/*/job.json")
    from blender_equi360.jobs.job import load_job
    assert load_job(job_file.parent).reference


def test_the_snippets_were_found():
    assert {t for t, _ in inline_snippets()} == {"demo", "demo-ltx"}


def named_source_files():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    top = "blender_equi360|engine|operators|bench|tools|samples|tests"
    pattern = rf"`((?:{top})/(?:[\w/.-]+\.(?:py|js|toml|md)|[\w/.-]*/))`"  # files, and folders ending in /
    return sorted({(d.name, m) for d in docs for m in re.findall(pattern, d.read_text())})


def test_the_docs_name_files_that_exist():
    named = named_source_files()
    assert len(named) > 15  # the pattern still finds them (21 files and folders when written)
    built = {path for _, path in named if subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0}
    missing = [f"{doc}: {path}" for doc, path in named if path not in built and not (ROOT / path).exists()]
    assert not missing, missing
