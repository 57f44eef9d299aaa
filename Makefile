# trackdelivery: every target sets up what it needs on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# rustup's cargo (native/ needs a current toolchain; Debian's is older) is often only on a login shell's PATH
export PATH := $(HOME)/.cargo/bin:$(PATH)
PYTEST_ARGS ?=
WALK_MODULE := redis-module/target/release/libtrackdelivery_redis.so

.PHONY: install system-deps kafka-jars lint format test test-chaos bench demo dev-up dev-down clean lock config-docs engine-table

install: system-deps $(VENV)/.installed $(VENV)/.native $(WALK_MODULE) kafka-jars

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v cargo >/dev/null || missing="$$missing cargo"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# the native extension (Rust, built with maturin): the query service's row decoder and the engine of
# `trackdelivery parse`; profile-guided when rustup has LLVM's tools (PGO=0: a plain build)
$(VENV)/.native: $(VENV)/.installed native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs native/src/*/*.rs) native/pyproject.toml native/build.sh
	native/build.sh $(BIN)
	touch $@

# the Redis module with the search walk as a command (Rust, no dependencies; the service uses the Lua
# script where Redis has not loaded it); `trackdelivery dev up` and the tests load it from here
$(WALK_MODULE): redis-module/Cargo.toml redis-module/Cargo.lock $(wildcard redis-module/src/*.rs)
	cargo build -q --release --manifest-path redis-module/Cargo.toml

kafka-jars:
	@ls deploy/kafka/libs/kafka_2.13-*.jar >/dev/null 2>&1 || \
		mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies

lock: $(VENV)/.installed
	$(BIN)/pip freeze --exclude-editable | grep -v '^trackdelivery' > constraints.txt

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	cargo clippy -q --release --manifest-path redis-module/Cargo.toml -- -D warnings
	cargo clippy -q --release --manifest-path native/Cargo.toml --all-targets -- -D warnings

format: install
	$(BIN)/ruff check --fix .

config-docs: install
	$(BIN)/python -m trackdelivery.settings_doc

# the native engine's copy of the reason and retry rules; a test fails while it is stale
engine-table: install
	$(BIN)/python -m processors.exim.engine_table

# the native crate's own unit tests (a debug build: quicker to compile), then everything else
test: install
	cargo test -q --manifest-path native/Cargo.toml
	$(BIN)/pytest $(PYTEST_ARGS)

test-chaos: install
	$(BIN)/pytest -m chaos $(PYTEST_ARGS)

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

demo: install
	$(BIN)/python -m trackdelivery.demo $(if $(LOG),--log $(LOG),)

dev-up: install
	$(BIN)/trackdelivery dev up

dev-down:
	$(BIN)/trackdelivery dev down

clean:
	-$(BIN)/trackdelivery dev down
	rm -rf $(VENV) .dev bench/.cache .pytest_cache .mypy_cache .ruff_cache
