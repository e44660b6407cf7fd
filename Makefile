# Shoal — the two commands a fresh machine needs are `make demo` and `make test` (see README.md).
# Needs only the Rust toolchain, Python 3 and make: everything else is installed into .venv/.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
VENV_STAMP := $(VENV)/.installed
REQUIREMENTS := tools/localstack/requirements.txt
STACK := tools/localstack/stack
# cargo-lambda and zig (PyPI ziglang) come from the venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv stack-up stack-down stack-status demo test checks fmt-check clippy lint wire-no-std cargo-test iot-core-clients lambda-invoke bench bench-router bench-hook bench-shadow bench-rollout bench-advancer bench-iot-core package fmt

help:
	@echo "make demo        start the local stack and run a simulated fleet through it (DEMO_DEVICES=200): provisioning, telemetry, config, a rollout that fails and recovers; HTML report in target/demo/"
	@echo "make test        fmt check, clippy, cfn-lint, the no_std builds of shoal-wire and shoal-firmware and all tests against the local stack"
	@echo "make stack-up    start moto on 127.0.0.1:4566, the local Lambda host (Invoke API 9001) and the local IoT Core (MQTT 8883, data plane 8880; stack-down stops them)"
	@echo "make iot-core-clients the local IoT Core with paho-mqtt and boto3 (stack up first; part of make test)"
	@echo "make package     build every Lambda zip with cargo lambda (release) and print sizes"
	@echo "make bench       telemetry decode/validate/record-build throughput (BENCHMARKS.md)"
	@echo "make bench-router the router's whole path without I/O: SQS batch -> SDK records + Parquet"
	@echo "make bench-hook  pre-provisioning hook latency against the local stack"
	@echo "make bench-shadow CPU per shadow-documents message (plan, policies, limits; no I/O)"
	@echo "make bench-rollout cohort evaluation throughput (things/s)"
	@echo "make bench-advancer OTA advancer run time over 100,000 devices (I/O in memory)"
	@echo "make bench-iot-core the local IoT Core: 1,000 TLS clients, memory per idle connection, QoS 1 publishes/s through a rule"

$(VENV_STAMP): $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $(REQUIREMENTS)
	touch $@

venv: $(VENV_STAMP)

stack-up: venv
	@$(STACK) start

stack-down:
	@$(STACK) stop

stack-status:
	@$(STACK) status

# The fleet demo (README: quick start): DEMO_DEVICES devices (default 200) through the whole local
# stack; the stack stays up afterwards for exploring (make stack-down stops it).
demo: venv
	cargo build --quiet -p shoal-demo -p shoal-cli
	@$(STACK) start
	@$(STACK) run ./target/debug/shoal-demo

# Starts the stack unless it (or the user's AWS_ENDPOINT_URL) is already there, runs every check,
# stops the stack again if it started it, and fails if any check failed.
test: venv
	@$(STACK) run $(MAKE) --no-print-directory checks

checks: fmt-check clippy lint wire-no-std cargo-test iot-core-clients lambda-invoke

fmt-check:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

lint: venv
	cd infra && ../$(VENV)/bin/cfn-lint

# shoal-wire, the device<->cloud contract, and shoal-firmware, the device side, must stay usable
# by no_std firmware: build them for a bare-metal target without std (rustup fetches the target's core library once, ~30 MB).
WIRE_TARGET := thumbv7em-none-eabihf
wire-no-std:
	rustup target list --installed | grep -qx $(WIRE_TARGET) || rustup target add $(WIRE_TARGET)
	cargo build --quiet -p shoal-wire --no-default-features --target $(WIRE_TARGET)
	cargo build --quiet -p shoal-firmware --no-default-features --target $(WIRE_TARGET)

cargo-test:
	cargo test --workspace --no-fail-fast

# The local IoT Core with a second MQTT library (paho-mqtt, MQTT 3.1.1 and 5) and boto3's iot-data.
iot-core-clients: venv
	$(VENV)/bin/python tests/iot-core-clients.py

# The functions under cargo-lambda's Lambda emulator, invoked with every file in events/.
lambda-invoke: venv
	tests/lambda-invoke.sh

bench:
	cargo bench -p shoal-core --bench telemetry_pipeline

# The router's whole path without I/O (SQS event -> WriteRecords inputs + Parquet; refusal path).
bench-router:
	cargo bench -p telemetry-router --features test-util --bench router_path

# Hook latency against the local stack (started and stopped around it when needed).
bench-hook: venv
	@$(STACK) run cargo bench -p provisioning --bench hook_latency

# CPU per shadow-documents message, I/O excluded (release build, no stack needed).
bench-shadow:
	cargo bench -p shadow-sync --bench documents_cpu

bench-rollout:
	cargo bench -p shoal-core --bench rollout_cohorts

bench-advancer:
	cargo bench -p ota-scheduler --features test-util --bench advancer

bench-iot-core:
	cargo bench -p shoal-iot-core --bench connections

fmt:
	cargo fmt --all

# Release zips for Lambda, x86_64 (guaranteed to build here; deploy default is arm64: run
# `cargo lambda build --release --arm64 --output-format zip` where its toolchain is available).
package: venv
	@if [ -z "$$(ls -d functions/*/ 2>/dev/null)" ]; then echo "no function crates under functions/ yet"; exit 0; fi; \
	 cargo lambda build --release --x86-64 --output-format zip $$(for d in functions/*/; do printf -- '--package %s ' "$$(basename $$d)"; done); \
	 for zip in target/lambda/*/bootstrap.zip; do \
	   printf '%-46s %9s bytes zipped, %9s bytes unzipped\n' "$$zip" "$$(stat -c %s $$zip)" \
	     "$$($(VENV)/bin/python -c 'import sys,zipfile; print(sum(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist()))' $$zip)"; \
	 done
