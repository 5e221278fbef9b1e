# The two commands: `make demo` and `make test`. Both create .venv and install on first use; the stamp
# file makes later calls skip the install until pyproject.toml changes.
PY := .venv/bin/python
# Intel MKL (torch's CPU BLAS) picks code paths by memory alignment unless told otherwise: two identical CPU
# 40-step runs of the stage-1 demo drifted apart from step 6 without this, and were bit-identical with it
# (same speed); the full 250-step demo still varies (README, "Reproducibility"). MKL reads it when the
# process starts, so it is set here, not from Python.
export MKL_CBWR ?= AUTO,STRICT
STAMP := .venv/.installed-stamp

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m run_scripts.demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf .venv output .pytest_cache
