# The two commands a newcomer runs. Each one sets itself up: a virtualenv in .venv with the exact versions of
# requirements.lock (the suite passed with them); setup.cfg keeps the compatible ranges for library users.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LOCK_VENV ?= .venv-lock
# Every extra the suite tests (verifiers is left out: it pins mcp==2.0.0, which OpenEnv cannot use; its test
# runs where it is installed alone).
EXTRAS := train,dev,ray,sb3,openenv,harmony

.PHONY: demo test install lock test-lowest clean

# A changed lock (or setup.cfg) rebuilds the venv from scratch, so nothing outside the lock stays installed.
# torch==2.13.0 matches this machine's CPU wheel on disk (pip prefers 2.13.0+cpu from find-links).
$(STAMP): $(LOCK) setup.cfg pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check || { echo "setup.cfg needs a package the lock lacks: run 'make lock'"; exit 1; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ossgym.cli demo

test: $(STAMP)
	$(PY) -m pytest -q

# Refresh the lock on purpose: resolve setup.cfg's ranges in a clean venv, freeze it, then run the suite on it.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q "torch==2.13.0" || $(LOCK_VENV)/bin/python -m pip install -q "torch>=2.11"
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	{ sed -n '1,3p' $(LOCK); $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable \
	  | sed -E 's/^(torch==[^+]*)\+cpu$$/\1/'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)
	$(MAKE) test

# Not part of `make test` (slow install): setup.cfg's lower bounds, with the package and env tests.
test-lowest:
	rm -rf .venv-lowest
	$(PYTHON) -m venv .venv-lowest
	$(PYTHON) .ci/lower_bounds.py setup.cfg > .venv-lowest/lowest.txt
	.venv-lowest/bin/python -m pip install -q -c .venv-lowest/lowest.txt -e ".[train,dev]"
	.venv-lowest/bin/python -m pytest -q tests/test_package.py tests/test_game2048_env.py tests/test_agent.py \
		tests/test_rollout_is.py

clean:
	rm -rf $(VENV) .venv-lock .venv-lowest .pytest_cache .hypothesis
