# whyprobe: `make demo` and `make test` set up everything on a fresh Debian 12 host.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
BPF_DIR := src/whyprobe/bpf
BPF_SRC := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_OBJ := $(BPF_SRC:.bpf.c=.bpf.o)
CLANG   ?= clang
STRIP   ?= llvm-strip
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror -I$(BPF_DIR)
FASTSQL := src/whyprobe/store/_fastsql.so

.PHONY: setup deps venv bpf native demo test test-unit bench clean

setup: deps venv bpf native

# System packages: clang/llvm build the BPF objects, libbpf is loaded at run time,
# bpftrace is the independent recorder the differential tests compare against.
deps: .stamp-deps
.stamp-deps:
	@if command -v $(CLANG) >/dev/null && command -v $(STRIP) >/dev/null && command -v bpftool >/dev/null \
	    && [ -f /usr/include/bpf/bpf_helpers.h ] && ldconfig -p | grep -q 'libbpf.so.1' \
	    && command -v bpftrace >/dev/null && command -v sqlite3 >/dev/null && [ -f /usr/include/sqlite3.h ] && command -v git >/dev/null && command -v chromium >/dev/null; then :; else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    clang llvm libbpf-dev bpftool bpftrace sqlite3 libsqlite3-dev git gcc make iproute2 chromium ; fi
	@# The image may ship NodeSource's nodejs (which bundles npm and conflicts with Debian's npm).
	@command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

bpf: $(BPF_OBJ)
$(BPF_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(wildcard $(BPF_DIR)/*.h) | deps
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
	$(STRIP) -g $@

# Bulk int64 rows in and out of SQLite without a Python object per value (store/fastsql.py).
native: $(FASTSQL)
$(FASTSQL): src/whyprobe/store/fastsql.c | deps
	gcc -O2 -shared -fPIC -Wall -Werror -o $@ $< -lsqlite3

demo: setup
	$(VENV)/bin/whyprobe demo

test: setup tests/node/node_modules/.stamp
	$(VENV)/bin/python -m pytest -q -rs

# npm MCP servers for the kernel tests (tests/kernel/test_spy_npm.py), pinned by the lock file.
tests/node/node_modules/.stamp: tests/node/package.json tests/node/package-lock.json | deps
	npm ci --no-audit --no-fund --prefix tests/node
	@touch $@

test-unit: setup
	$(VENV)/bin/python -m pytest -q tests/unit

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(VPY) $$b || exit 1; done

clean:
	rm -f $(BPF_OBJ) $(FASTSQL) .stamp-deps
	rm -rf $(VENV)
