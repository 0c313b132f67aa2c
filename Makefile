# mergen — build, assets, tests.
#
#   make run      set up this host and run the demo (daemon, forwarder, a VM)
#   make test     everything: unit, integration and end-to-end tests (root)
#   make kube     the Kubernetes control plane the tests run (cached by version)
#   make bench    benchmarks that print numbers
#
# Everything built lands in .build/ (ignored by git).

SHELL      := /bin/bash
GO         ?= go
BUILD      := $(CURDIR)/.build
BIN        := $(BUILD)/bin
ASSETS     := $(BUILD)/assets
KUBE       := $(BUILD)/kube
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -X github.com/mergenhq/mergen/internal/version.Version=$(VERSION)
PROGRAMS   := $(notdir $(wildcard cmd/*))
TEST_TIMEOUT ?= 25m

export PATH := /usr/local/go/bin:$(BUILD)/tools:$(PATH)
# One build configuration for the programs, go vet and the tests (static,
# paths trimmed), so each package compiles once, not once per
# configuration: from empty caches that saves 5 of 13 minutes of
# compiling, most of it mergen-node's Kubernetes libraries.
export CGO_ENABLED := 0
export GOFLAGS := -trimpath $(filter-out -trimpath,$(GOFLAGS))
export MERGEN_TEST_ASSETS := $(ASSETS)

.PHONY: all build deps deps-runtime assets kube test test-unit bench run stop clean fmt vet

all: build

deps:
	@if [ "$$(id -u)" -eq 0 ]; then scripts/install-deps.sh; \
	else echo "make deps: not root, skipping package installation"; fi

# What running mergen needs, without the test and benchmark tooling.
deps-runtime:
	@if [ "$$(id -u)" -eq 0 ]; then scripts/install-deps.sh runtime; \
	else echo "make deps-runtime: not root, skipping package installation"; fi

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ $(addprefix ./cmd/,$(PROGRAMS))

assets: build
	scripts/build-assets.sh $(ASSETS)

# etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kubectl,
# built from the Go module proxy into a cache outside the repository
# (~12 min of two cores the first time, nothing after); .build/kube/bin
# points at them. `make clean` leaves the cache alone.
kube:
	scripts/build-kube.sh $(KUBE)

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# The full suite. Root-only tests skip loudly when not root; CI runs as root.
test: deps build assets kube
	$(GO) vet ./...
	$(GO) test -timeout $(TEST_TIMEOUT) -count=1 ./...

# Quick loop while developing: unit tests only (no assets).
test-unit:
	$(GO) test -count=1 -short ./...

bench: deps build assets
	@for b in bench/*.sh; do echo "== $$b"; bash $$b || exit 1; done

run: deps-runtime build assets
	scripts/run-demo.sh

stop:
	scripts/run-demo.sh stop

clean:
	rm -rf $(BUILD)
