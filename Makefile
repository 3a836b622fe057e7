# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: run test lint deps test-deps native system-deps system-test-deps bench-sip bench-media bench-hold bench-flood bench-fuzz bench-cluster cluster clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need Python 3.11 ($(PY))"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Both also compile the queue engine and the simulator's loop with mypyc into build/native/ (seconds when
# nothing changed; without a C compiler it says so and the pure-Python modules run): tools/build_native.py.
deps: $(BIN)/python system-deps
	$(BIN)/pip install -q -e '.[native]'
	$(BIN)/python tools/build_native.py

test-deps: $(BIN)/python system-test-deps
	$(BIN)/pip install -q -e '.[test,native]'
	$(BIN)/python tools/build_native.py

# Rebuild the compiled modules after editing their sources (until then the pure-Python ones run).
native: $(BIN)/python
	$(BIN)/python tools/build_native.py

# Debian packages: espeak-ng and sox render prompts (server and tests);
# SIPp (sip-tester) is the caller the tests drive for real; the tests start
# their own private PostgreSQL cluster (postgresql) besides SQLite.
# gcc and python3-dev let the set-up compile the queue engine (tools/build_native.py; without them it runs pure Python).
APT_RUN := espeak-ng sox gcc python3-dev
# prometheus (with promtool) checks the ops view's rules and runs its queries (tests/test_dashboards.py, test_prometheus_live.py).
# kamailio is the reference SIP server of `make bench-sip` (sim/live/kamailio/stateful.cfg) and the cluster's
# front (examples/cluster/kamailio.cfg).
# redis-server holds cluster mode's shared state in the cluster tests and `make cluster`.
APT_TEST := $(APT_RUN) sip-tester postgresql chromium chromium-driver prometheus kamailio redis-server

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

system-deps:
	$(call apt_install,$(APT_RUN))

system-test-deps:
	$(call apt_install,$(APT_TEST))

run: deps system-deps
	$(BIN)/frontdesk serve $(if $(CONFIG),--config $(CONFIG))

lint: test-deps
	$(BIN)/ruff check ivr queueing callback sim tests tools
	$(BIN)/mypy

test: test-deps system-test-deps lint
	$(BIN)/pytest -q

bench-sip: deps system-test-deps
	$(BIN)/frontdesk bench-sip

bench-media: deps system-test-deps
	$(BIN)/frontdesk bench-media

bench-hold: deps system-test-deps
	$(BIN)/frontdesk bench-hold

bench-flood: deps system-test-deps
	$(BIN)/frontdesk bench-flood

bench-fuzz: deps
	$(BIN)/frontdesk bench-fuzz

bench-cluster: deps system-test-deps
	$(BIN)/frontdesk bench-cluster

# a local cluster on 127.0.0.1: PostgreSQL, Redis, Kamailio on :5060 and NODES nodes (default 2), until Ctrl-C
cluster: deps system-test-deps
	$(BIN)/frontdesk cluster --nodes $(or $(NODES),2) $(if $(CONFIG),--config $(CONFIG))

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache frontdesk.db*
