# The two commands: `make demo` and `make test`. Both create .venv and install on first use; the stamp
# file makes later calls skip the install until pyproject.toml changes.
PY := .venv/bin/python
STAMP := .venv/.installed-stamp

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m run_scripts.demo

# The suite runs with 1 and with 2 threads: an assertion that holds only for one thread count (a shape- or
# thread-dependent rounding asserted exactly) fails here, not on a user's machine.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q
	OMP_NUM_THREADS=2 $(PY) -m pytest -q

clean:
	rm -rf .venv output .pytest_cache
