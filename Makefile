# Equi360 developer commands. Each target creates .venv/ (pinned, requirements.txt) when needed.
#   make demo      the sample city clip → its 360° reference → a draft 360° video, in out/demo/
#   make demo-ltx  the same clip through the real LTX-2.3 code path on a tiny random-weight model (CPU)
#   make test      lint (ruff, pyproject.toml) and run the whole test suite
#   make extension the installable zips, one per platform, with PyAV's wheel (dist/)
#   make bench     run the benchmarks (results: docs/BENCHMARKS.md, docs/QUALITY.md); make bench-gpu on a CUDA machine

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
LTS_INSTALLED := .venv-lts/.installed
LTS42_INSTALLED := .venv-lts42/.installed

.PHONY: demo demo-ltx test bench bench-gpu extension clean

$(INSTALLED): requirements.txt requirements-engine.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is needed (bpy 5.0.1 is built for it): make PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

demo: $(INSTALLED)
	$(PY) samples/make_city.py samples/build
	@mkdir -p out/demo
	$(PY) -m blender_equi360 reference samples/build/city_flat.mp4 -o out/demo/city_reference.mkv \
		--mask out/demo/city_mask.mkv --hfov 100
	$(PY) -c "from blender_equi360.jobs.job import Job, save_job; save_job('out/demo', Job.from_fields(reference='city_reference.mkv', \
		mask='city_mask.mkv', output='city_360_draft.mp4', backend='draft'))"
	$(PY) -m engine run out/demo > out/demo/events.jsonl
	$(PY) -m blender_equi360 preview out/demo/city_360_draft.mp4 -o out/demo/city_preview.png
	@echo "demo: out/demo/city_reference.mkv (+ city_mask.mkv) → out/demo/city_360_draft.mp4 (a DRAFT fill, no model,"
	@echo "      marked as 360°), its preview sheet out/demo/city_preview.png; ground truth: samples/build/city_pano.mkv"

demo-ltx: $(INSTALLED)
	$(PY) samples/make_city.py samples/build
	$(PY) -m engine make-tiny-models out/tiny-models > /dev/null
	@mkdir -p out/demo-ltx
	$(PY) -m blender_equi360 reference samples/build/city_flat.mp4 -o out/demo-ltx/reference.mkv \
		--mask out/demo-ltx/mask.mkv --hfov 100 --size 256x128 --frames 17 -q
	$(PY) -c "from blender_equi360.jobs.job import Job, ModelFiles, save_job; save_job('out/demo-ltx', Job.from_fields( \
		reference='reference.mkv', mask='mask.mkv', backend='ltx', steps=4, delivery_size='512x256', models=ModelFiles( \
		checkpoint='../tiny-models/ltx-2.3-tiny-dev.safetensors', text_encoder='../tiny-models/gemma-3-tiny', \
		ic_lora='../tiny-models/ic-lora-tiny.safetensors')))"
	EQUI360_ENGINE_DEVICE=cpu $(PY) -m engine run out/demo-ltx > out/demo-ltx/events.jsonl
	@echo "demo-ltx: out/demo-ltx/result.mp4 (random weights: noise, made by the real loading and generation code)"

$(LTS_INSTALLED): requirements-lts.txt
	$(PYTHON) -m venv .venv-lts
	.venv-lts/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-lts.txt
	touch $@

$(LTS42_INSTALLED): requirements-lts42.txt
	$(PYTHON) -m venv .venv-lts42
	.venv-lts42/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-lts42.txt
	touch $@

test: $(INSTALLED) $(LTS_INSTALLED) $(LTS42_INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m blender_equi360.geometry.kernels  # the finish's and the draft's loops compiled once, before the
	$(PY) -m engine.draft                      # test workers start (then loaded from numba's cache)
	$(PY) -m pytest -n auto --maxprocesses 4  # pytest-xdist: the tests spread over up to 4 cores

bench: $(INSTALLED)
	$(PY) bench/reference.py
	$(PY) bench/quality.py --write
	$(PY) bench/finish.py --write

extension: $(INSTALLED)
	$(PY) tools/build_extension.py

bench-gpu: $(INSTALLED)
	$(PY) bench/engine_gpu.py --write

clean:
	rm -rf out samples/build bench/out .pytest_cache
