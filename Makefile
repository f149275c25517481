# Equi360 developer commands. Each target creates .venv/ (pinned, requirements.txt) when needed.
#   make demo   build the sample city clip and its 360° reference video into out/demo/
#   make test   run the whole test suite
#   make bench  run the benchmarks (results: docs/BENCHMARKS.md)

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: demo test bench extension clean

$(INSTALLED): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is needed (bpy 5.0.1 is built for it): make PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

demo: $(INSTALLED)
	$(PY) samples/make_city.py samples/build
	@mkdir -p out/demo
	$(PY) -m blender_equi360 reference samples/build/city_flat.mp4 -o out/demo/city_reference.mkv \
		--mask out/demo/city_mask.mkv --hfov 100
	@echo "demo: out/demo/city_reference.mkv (+ city_mask.mkv); ground truth: samples/build/city_pano.mkv"

test: $(INSTALLED)
	$(PY) -m pytest

bench: $(INSTALLED)
	$(PY) bench/reference.py

clean:
	rm -rf out samples/build bench/out .pytest_cache
