# Two commands from a fresh clone:  `make run`  (main job on the built-in default)  and  `make test`.
# Both create .venv on first use and reuse it afterwards (the stamp file is refreshed when the pins change).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.autosculpt-installed
PIP     = $(BIN)/python -m pip --disable-pip-version-check -q
RUN_OUT ?= runs/quickstart
# pipefail: a failing pip must fail the recipe even though its output is filtered through grep.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: setup run test test-fast lint protos protos-check clean

setup: $(STAMP)

# torch goes first and pinned: any requirement that admits a newer torch pulls multi-GB CUDA wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install 'torch==2.13.0' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
	$(PIP) install -c constraints.txt -e '.[host,dev,tflite-export,cluster]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	# The [models] extra (timm, torchvision) for the timm:/torchvision: loaders and the test corpus, with
	# --no-deps: torchvision's dependencies are already here, and resolving them could swap torch for a CUDA build.
	$(PIP) install --no-deps -c constraints.txt 'torchvision==0.28.0' 'timm==1.0.31' 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(BIN)/python -m pip check
	touch $(STAMP)

run: setup
	$(BIN)/sculpt-host search --out $(RUN_OUT)

# Two phases, both always run: everything that does not measure, spread over the CPUs (pytest-xdist, one
# torch thread per worker so the workers do not fight over the cores; the steps of one corpus model stay in
# one worker), then the tests marked `alone` (real latency, energy and deadlines: searches, agents, remote
# devices) one at a time with nothing beside them. The Ray cluster tests get a pytest process of their own: Ray
# starts its nodes with Python code run between fork and exec, which can hang on a lock another thread holds at
# the fork, and the tests before them leave gRPC servers and channels (and their threads) in the process.
# The trained test checkpoints and lowered programs go to one folder for every phase ($AUTOSCULPT_TEST_CACHE, a
# fresh temporary one unless set), so a later phase does not train or lower them again.
test: setup
	$(BIN)/python -m protos.generate --check
	own=; cache="$${AUTOSCULPT_TEST_CACHE:-}"; if [ -z "$$cache" ]; then cache=$$(mktemp -d); own=1; fi; \
	export AUTOSCULPT_TEST_CACHE="$$cache"; rc=0; \
	OMP_NUM_THREADS=1 $(BIN)/pytest -n auto --dist loadgroup -m "not alone" || rc=$$?; \
	$(BIN)/pytest -m alone --ignore=tests/integration/cluster || rc=$$?; \
	$(BIN)/pytest -m alone tests/integration/cluster || rc=$$?; \
	if [ -n "$$own" ]; then rm -rf "$$cache"; fi; exit $$rc

# The inner loop: unit tests only (no real servers, runtimes, sshd, corpus or searches); CI runs `make test`.
test-fast: setup
	$(BIN)/pytest -q -x -n auto -m "not slow and not integration"

lint: setup
	$(BIN)/ruff check .

protos: setup
	$(BIN)/python -m protos.generate

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
