# shimmer: `make run` and `make test` are all a newcomer needs (see README.md).
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/shimmer

# Debian packages, as "command:package" pairs: a package is installed only when its
# command is missing. The database servers live off PATH on Debian, hence the paths
# (the glob expands in `command -v`).
BUILD_DEPS := cmake:cmake pkg-config:pkg-config cc:gcc perl:perl make:make curl:curl
# `make run` and `make demo` create their Shimmie database with the sqlite3 CLI; the
# demo renders its gallery page and serves it with python3.
RUN_DEPS := sqlite3:sqlite3 python3:python3
# The newcomer, demo and fleet tests run those scripts; the demo test drives Chromium.
TEST_DEPS := $(RUN_DEPS) promtool:prometheus openssl:openssl \
  /usr/lib/postgresql/*/bin/postgres:postgresql /usr/sbin/mariadbd:mariadb-server \
  /usr/bin/chromium:chromium
# `make bench` runs shimmer beside nginx, Varnish (hitch in front for TLS) and the Pingora
# floor; wrk and h2load drive them, taskset pins them, openssl makes their certificate.
BENCH_DEPS := /usr/sbin/nginx:nginx /usr/sbin/varnishd:varnish /usr/sbin/hitch:hitch \
  wrk:wrk h2load:nghttp2-client taskset:util-linux openssl:openssl python3:python3
.PHONY: all deps run-deps test-deps moto bench-deps install-missing build run demo test lint bench clean

all: build

# Installs only what is missing; `apt-get update` runs once, and only if needed.
deps:
	@$(MAKE) --no-print-directory install-missing PAIRS="$(BUILD_DEPS)"

run-deps: deps
	@$(MAKE) --no-print-directory install-missing PAIRS="$(RUN_DEPS)"

test-deps: deps moto
	@$(MAKE) --no-print-directory install-missing PAIRS="$(TEST_DEPS)"

# The S3 origin tests (tests/s3_origin.rs) run moto's S3 server, which checks SigV4
# signatures; it comes from PyPI (no Debian package has a server mode). Installed only
# when missing; Debian's python refuses pip outside a venv (PEP 668), hence the retry.
moto:
	@$(MAKE) --no-print-directory install-missing PAIRS="python3:python3 pip3:python3-pip"
	@python3 -c 'import moto.server, boto3' 2>/dev/null || { \
	  echo "installing: moto[server] (pip)"; \
	  python3 -m pip install --quiet 'moto[server]' || \
	  python3 -m pip install --quiet --break-system-packages 'moto[server]'; }

install-missing:
	@missing=""; for pair in $(PAIRS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(CARGO) build --release --locked

# One mirror (node 8080) on the embedded default config, reading the SQLite Shimmie
# database target/run/shimmie.db (made on the first run), in front of the built-in
# origin serving conf/sample-data. Ctrl-C stops both.
run: build run-deps
	@scripts/run.sh $(BIN)

# Three mirrors (weights 5, 5 and 10) on one SQLite Shimmie database, one origin and a
# gallery page whose images come through the fleet, on 127.0.0.1 ports.
demo: build run-deps
	@DEMO_MODE=$(or $(MODE),redirect) scripts/demo.sh $(BIN)

# The whole suite: unit, property and integration tests, on one release build that
# the integration tests share (they start target/release/shimmer).
test: test-deps
	$(CARGO) test --release --locked --all-targets --no-fail-fast

bench-deps: deps
	@$(MAKE) --no-print-directory install-missing PAIRS="$(BENCH_DEPS)"

# Benchmarks report, they never fail on a number (they do on a wrong answer). The fleet
# simulation (no network), then shimmer, nginx, Varnish and the Pingora floor in turn in
# front of one origin: tables on stdout, JSON in target/bench/. See README.md, Performance.
# One cargo invocation, one profile builds the binary, the floor and the simulation:
# examples need no test harness, and building them with the binary resolves features
# once (the dev-dependencies change serde's and others', so a separate `cargo build`
# and an example build would each compile everything). BENCH_ARGS go to bench.py, e.g.
# `make bench BENCH_ARGS="--scenarios disk"`; `bench.py --help` lists them.
BENCH_ARGS ?=
bench: bench-deps
	$(CARGO) build --release --locked --bin shimmer --example floor --example fleet_sim
	target/release/examples/fleet_sim
	python3 benches/http/bench.py $(BENCH_ARGS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
