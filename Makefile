# `make test`: create .venv, install everything, run the suite. Works on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test quick demo mutation

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	# facenet-pytorch pins torch<2.3 and numpy<2 but works with both: install it without its pins
	$(PY) -m pip install --quiet --no-deps facenet-pytorch==2.6.0
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# the quick loop while editing: every test but those marked slow (training, the demo, the simulated Kaggle)
quick: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m demo

# mutation testing of the kernel's contract (tests/mutation.py, [mutmut] in setup.cfg); not part of `make test`
mutation: install
	$(PY) -m pip install --quiet -r requirements-dev.txt
	HF_HUB_OFFLINE=1 $(PY) -m tests.mutation $(MUTATION_ARGS)
