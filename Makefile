# The front door: `make demo` runs the demo mesh, `make test` runs every test.
# Both install the Debian packages they need first (quick when present).

BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_FUZZ ?= build-fuzz
FUZZ_SECONDS ?= 60

# Build and runtime dependencies, and the real peers the tests use.
DEPS = meson ninja-build pkg-config gcc g++ python3 \
       libmbedtls-dev libnghttp2-dev libc-ares-dev libevent-dev libjansson-dev \
       libyaml-dev check libpcre2-dev libhttp-parser-dev \
       openssl curl nghttp2-client iproute2 iptables
TEST_DEPS = clang libclang-rt-14-dev valgrind prometheus python3-grpcio nghttp2-server dnsmasq-base etcd-server
# The demo's gRPC service and client (Debian's interpreter).
DEMO_DEPS = python3-grpcio
# Only for `make bench`: the proxies the HTTP benchmark compares meshd with (the tests do not need them).
BENCH_DEPS = nginx-light haproxy

.PHONY: all deps test-deps build demo demo-down test bench clean

all: build

# apt-get update runs once, and only when something is missing.
deps:
	@missing=$$(for p in $(DEPS) $(EXTRA_DEPS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test-deps:
	@$(MAKE) --no-print-directory deps EXTRA_DEPS="$(TEST_DEPS)"

$(BUILD)/build.ninja:
	meson setup $(BUILD) -Dwerror=true

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

demo: build
	@$(MAKE) --no-print-directory deps EXTRA_DEPS="$(DEMO_DEPS)"
	@bash examples/demo/demo.sh $(BUILD)

# Stops every process `make demo` started and removes its files.
demo-down:
	@bash examples/demo/demo.sh down

test: test-deps $(BUILD)/build.ninja
	@bash tests/run.sh $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ) $(FUZZ_SECONDS)

# Every benchmark (doc/BENCHMARKS.md); they report figures and never fail on a time.
bench: build
	@$(MAKE) --no-print-directory deps EXTRA_DEPS="$(BENCH_DEPS)"
	meson test -C $(BUILD) --benchmark --verbose

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ)
