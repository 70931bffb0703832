# Two commands do everything on a fresh machine:
#   make demo   run the example site wrapped in the middleware
#   make test   lint, type-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test test-fast bench lint typecheck pytest venv browser clean messages docs dist

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/.installed

# The demo needs the package alone (its fake Klaviyo and server are built in),
# not the test toolchain: a fresh `make demo` installs a handful of packages.
$(BIN)/.demo-installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# The browser test drives Debian's chromium (no browser download). Outside
# CI a failed install only makes that one test skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| [ -z "$$CI" ]; }

pytest: venv browser
	$(BIN)/python -m pytest

test: lint typecheck pytest

# The quick loop while working: lint, types and the tests that need no
# processes, servers or waiting (seconds); `make test` runs everything.
test-fast: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

# Benchmarks print ratios measured in one run; wrk comes from Debian.
bench: venv
	$(BIN)/pip install --quiet -e '.[test,bench]'
	@command -v wrk >/dev/null 2>&1 || (apt-get install -y -qq wrk) || true
	$(BIN)/python benchmarks/passthrough.py
	$(BIN)/python benchmarks/submit_latency.py --plot docs/latency.png
	$(BIN)/python benchmarks/accept_rate.py
	$(BIN)/python benchmarks/multiprocess.py --plot docs/multiprocess.png
	$(BIN)/python benchmarks/delivery_delay.py
	$(BIN)/python benchmarks/burst_calls.py
	$(BIN)/python benchmarks/celery_burst.py  # needs Redis on 127.0.0.1:6379
	$(BIN)/python benchmarks/peers.py  # needs Redis on 127.0.0.1:6379; about 20 minutes

# After changing a visitor-facing message: refresh the template and every
# language's catalog, translate what is new (marked fuzzy or empty), then
# `make messages` again to compile. tests/test_i18n.py checks they agree.
LOCALE := klaviyo_middleware/locale
messages: venv
	$(BIN)/pybabel extract --no-default-keywords -k msg --no-location --sort-output \
		--project klaviyo_middleware --copyright-holder "klaviyo_middleware authors" \
		-o $(LOCALE)/klaviyo_middleware.pot klaviyo_middleware
	$(BIN)/pybabel update -D klaviyo_middleware -i $(LOCALE)/klaviyo_middleware.pot \
		-d $(LOCALE) --no-fuzzy-matching --ignore-obsolete
	$(BIN)/pybabel compile -D klaviyo_middleware -d $(LOCALE) --statistics

# The documentation site, offline, into site/; --strict: a broken link or
# anchor, or a page left out of mkdocs.yml's nav, is an error.
docs: venv
	$(BIN)/mkdocs build --strict

# The release artefacts, checked as a package index would check them.
dist: venv
	rm -rf dist
	$(BIN)/python -m build --sdist --wheel .
	$(BIN)/twine check --strict dist/*

demo: $(BIN)/.demo-installed
	$(BIN)/klaviyo-middleware demo --host $(HOST) --port $(PORT)

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache site dist build
