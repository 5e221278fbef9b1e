# The two commands: `make demo` and `make test`. Both create .venv and install on first use; the stamp
# file makes later calls skip the install until pyproject.toml changes.
PY := .venv/bin/python
STAMP := .venv/.installed-stamp

# The LAVIS oracle (tests/test_lavis_*.py drive LAVIS 1.0.2 itself in a subprocess of this venv); quick when present.
LAVIS_PY := .venv-lavis/bin/python
LAVIS_STAMP := .venv-lavis/.installed-stamp

.PHONY: install lavis demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(STAMP)

install: $(STAMP)

$(LAVIS_STAMP): tests/lavis/requirements.txt
	test -x $(LAVIS_PY) || python3 -m venv .venv-lavis
	$(LAVIS_PY) -m pip install --quiet --disable-pip-version-check -r tests/lavis/requirements.txt
	$(LAVIS_PY) -m pip install --quiet --disable-pip-version-check --no-deps salesforce-lavis==1.0.2
	touch $(LAVIS_STAMP)

lavis: $(LAVIS_STAMP)

demo: $(STAMP)
	$(PY) -m run_scripts.demo

# The suite runs with 1 and with 2 threads: an assertion that holds only for one thread count (a shape- or
# thread-dependent rounding asserted exactly) fails here, not on a user's machine. The two runs go side by side
# (CI's 2 cores; each in its own temporary folder, the 1-thread run's report printed after the 2-thread run's):
# 12 min against 16 one after the other on a 2-core machine. Both must pass.
test: $(STAMP) $(LAVIS_STAMP)
	@one=$$(mktemp -d); two=$$(mktemp -d); \
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider --basetemp=$$one/tmp > $$one/report 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; rm -rf $$one $$two; exit 130' INT TERM; \
	OMP_NUM_THREADS=2 $(PY) -m pytest -q --basetemp=$$two/tmp; rc2=$$?; \
	wait $$pid; rc1=$$?; \
	echo "=== the same suite at OMP_NUM_THREADS=1:"; cat $$one/report; rm -rf $$one $$two; \
	echo "=== exit status at OMP_NUM_THREADS=2: $$rc2, at OMP_NUM_THREADS=1: $$rc1"; \
	test $$rc2 -eq 0 && test $$rc1 -eq 0

clean:
	rm -rf .venv .venv-lavis output .pytest_cache
