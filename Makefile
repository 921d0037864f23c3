# The single entry point: make run | test | smoke | lint | typecheck | docs | bench
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
RUFF_OPTS := --line-length 100 --target-version py310
RUFF_RULES := --select E,F,W,I,B,UP,RUF,SIM

# Debian packages the browser, proxy and Redis tests use: real Chromium,
# Firefox and WebKitGTK on a virtual display, nginx, redis-server (tests
# start their own on a free port; no service is enabled), and Node (18 or
# later) for the JavaScript client's own tests and the docs' JS samples, and
# iproute2's ip for the delayed link between two network namespaces
# (benchmarks/link.py). Installed when missing and we may (root with
# apt-get); otherwise those tests skip, saying why.
SYSTEM_PACKAGES := chromium firefox-esr webkit2gtk-driver nginx xvfb xauth fonts-dejavu-core redis-server nodejs iproute2
SYSTEM_TOOLS := /usr/bin/chromium /usr/bin/firefox-esr /usr/bin/WebKitWebDriver /usr/sbin/nginx /usr/bin/Xvfb /usr/bin/redis-server /usr/bin/node /bin/ip

.PHONY: run test test-stream-worker smoke pytest lint format typecheck docs clean system-deps bench bench-quick bench-crosscheck matrix

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime only (what `make run` needs): the library, gevent and the demo's
# own requirements. The demo itself (examples/demo) is not installed; gunicorn
# imports it from this checkout (its --chdir, the current folder, is on the path).
$(VENV)/.run-stamp: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[gevent,demo]'
	touch $@

# Everything the checks need.
$(VENV)/.dev-stamp: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[gevent,demo,redis,test,lint,docs,bench]'
	touch $@

run: $(VENV)/.run-stamp
	@echo "flask-sse-flush demo: open http://$(HOST):$(PORT)/ (Ctrl-C stops it)"
	$(BIN)/gunicorn --worker-class gevent --workers 1 --bind $(HOST):$(PORT) \
		--chdir '$(CURDIR)' 'examples.demo:create_app()'

test: system-deps lint typecheck docs smoke pytest bench-quick

# Our streams against sse-starlette, a bare generator and the raw-socket
# limit, in one run: prints the table, writes benchmarks/results/latest.json
# and regenerates docs/benchmarks.rst and its plot (about 20 minutes, the
# 20 ms link and the independent harness included).
bench: $(VENV)/.dev-stamp
	$(BIN)/python -m benchmarks.run

# The independent harness alone, against the last full run's results
# (benchmarks/results/latest.json): about 2 minutes.
bench-crosscheck: $(VENV)/.dev-stamp
	$(BIN)/python -m benchmarks.crosscheck

# The same code at tiny sizes (under a minute), so it never rots; it
# asserts nothing about speed.
bench-quick: $(VENV)/.dev-stamp
	$(BIN)/python -m benchmarks.run --quick
	$(BIN)/python -m benchmarks.crosscheck --quick --results benchmarks/results/quick.json
	$(BIN)/python -m benchmarks.matrix --quick --only gunicorn-gevent waitress

# Every WSGI server side by side: writes docs/_generated/compat.rst (the
# table in docs/servers.rst) and benchmarks/results/matrix.json (2 minutes).
matrix: $(VENV)/.dev-stamp
	$(BIN)/python -m benchmarks.matrix

system-deps:
	@missing=""; for tool in $(SYSTEM_TOOLS); do [ -x $$tool ] || missing=1; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(SYSTEM_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	else \
		echo "note: browser and nginx tests will skip; install: $(SYSTEM_PACKAGES)"; \
	fi

# The README's front door, as a new user meets it: `make run` in a venv
# holding only what it installs (page, a render to `complete`, the MP4), and
# the quickstart copied out of README.md and run as written in a venv holding
# only `pip install ".[gevent]"` (then pytest).
smoke: $(VENV)/.dev-stamp
	$(BIN)/python -m pytest -m smoke tests/smoke

pytest: $(VENV)/.dev-stamp
	$(BIN)/python -m pytest -m "not smoke"

# The real-server and browser tests again, every gunicorn -k gevent of them
# on the stream worker (flask_sse_flush.wsgi.worker.StreamWorker) instead.
test-stream-worker: system-deps $(VENV)/.dev-stamp
	SSE_FLUSH_TEST_WORKER=stream $(BIN)/python -m pytest -m integration

lint: $(VENV)/.dev-stamp
	$(BIN)/ruff check $(RUFF_OPTS) $(RUFF_RULES) flask_sse_flush examples tests benchmarks docs/conf.py
	$(BIN)/ruff format --check $(RUFF_OPTS) flask_sse_flush examples tests benchmarks docs/conf.py

format: $(VENV)/.dev-stamp
	$(BIN)/ruff check --fix $(RUFF_OPTS) $(RUFF_RULES) flask_sse_flush examples tests benchmarks docs/conf.py
	$(BIN)/ruff format $(RUFF_OPTS) flask_sse_flush examples tests benchmarks docs/conf.py

typecheck: $(VENV)/.dev-stamp
	$(BIN)/mypy --strict flask_sse_flush examples

docs: $(VENV)/.dev-stamp
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache *.egg-info
