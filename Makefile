# Two commands do all the set-up: `make run` and `make test`. Both create .venv when it is missing and install the
# exact versions in constraints.txt (pyproject.toml states ranges; the constraints make the install reproducible).
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: run test lint install constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/bench run suites/smoke.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check bench tests scripts
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check bench tests scripts

# After a dependency change: install it into .venv (pip install -e '.[dev]' with the new range), run the tests,
# then write what .venv holds (every package, less pip and bench itself) as the new constraints.
constraints:
	{ grep '^#' constraints.txt; $(VENV)/bin/pip freeze --all --exclude-editable | grep -v -i -E '^(pip|bench)=='; } \
		> constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .bench_cache
