# Warren's two entry points: `make run` and `make test`. Both install what is missing first.
JOBS ?= 2
BUILD ?= build
ASAN ?= build-asan
FUZZ ?= build-fuzz
# Seconds per fuzz target in `make test` (the suite's 25-minute budget); longer: make fuzz FUZZ_SECONDS=600
FUZZ_SECONDS ?= 40
PYTEST ?= python3 -m pytest

.PHONY: all deps build build-asan build-fuzz run test unit integration fuzz bench bench-cluster bench-qq sim clean docker-test bench-docker
SEEDS ?= 100000

all: build

deps:
	@scripts/deps.sh test

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

build-asan:
	@cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DWARREN_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN) -j$(JOBS)

build-fuzz:
	@CC=clang cmake -S . -B $(FUZZ) -DCMAKE_BUILD_TYPE=Debug -DWARREN_FUZZ=ON \
	   -DCMAKE_C_FLAGS="-fsanitize=fuzzer-no-link,address,undefined" >/dev/null
	@cmake --build $(FUZZ) -j$(JOBS) --target $$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$$//')

run:
	@scripts/deps.sh build
	@$(MAKE) --no-print-directory build
	./$(BUILD)/warren-server $(if $(CONFIG),--config $(CONFIG),)

unit: build-asan
	cd $(ASAN) && ctest --output-on-failure

integration: build build-asan
	WARREN_BIN=$(CURDIR)/$(ASAN)/warren-server WARREN_CBIN=$(CURDIR)/$(BUILD) \
	  $(PYTEST) -q -ra tests/integration

# Each target grows its own corpus in $(FUZZ)/corpus/<target>, seeded from tests/fuzz/corpus/<target>.
# A crash fails the run and shows the fuzzer's report.
fuzz: build-fuzz
	@for f in $(FUZZ)/fuzz_*; do \
	  [ -f "$$f" ] && [ -x "$$f" ] || continue; \
	  name=$$(basename $$f); \
	  echo "fuzz: $$f ($(FUZZ_SECONDS)s)"; \
	  mkdir -p $(FUZZ)/corpus/$$name; \
	  seeds=; [ -d tests/fuzz/corpus/$$name ] && seeds=tests/fuzz/corpus/$$name; \
	  out=$$($$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=0 $(FUZZ)/corpus/$$name $$seeds 2>&1); rc=$$?; \
	  if [ $$rc -ne 0 ]; then echo "$$out" | tail -60; exit 1; fi; \
	  echo "$$out" | tail -2; \
	done

test: deps
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory fuzz
	@$(MAKE) --no-print-directory integration
	@$(MAKE) --no-print-directory docker-test

# Issue 8: builds deploy/Dockerfile's image and tests the docker-compose three-node cluster
# (tests/docker; skipped with the reason where no Docker engine runs).
docker-test:
	$(PYTEST) -q -ra -s tests/docker

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory build
	tests/bench/run.sh

# Issue 5: Warren's three-node cluster vs a three-node RabbitMQ 3.10 cluster (metadata ops/s,
# cross-node publish); rewrites only the Cluster section of docs/performance.md.
bench-cluster:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory build
	tests/bench/cluster_run.sh

# Issue 6: quorum queues on Warren's three-node cluster vs RabbitMQ 3.10's (throughput, latency,
# 1M backlog, leader failover); rewrites only the Quorum queues section of docs/performance.md.
bench-qq:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory build
	tests/bench/qq_run.sh

# Issue 7: /api/queues latency and idle CPU with 10,000 queues vs RabbitMQ 3.10's management
# plugin; rewrites only the Management section of docs/performance.md.
.PHONY: bench-mgmt
bench-mgmt:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory build
	tests/bench/mgmt_bench.sh

# Issue 8: image size, compose up -> healthy cluster, longest confirm pause in a rolling restart;
# rewrites only the Deployment section of docs/performance.md.
bench-docker:
	@scripts/deps.sh test
	tests/bench/docker_bench.sh

# Long deterministic-simulation run of the Raft library (make test runs a shorter one): half the
# seeds mixed faults, half membership changes with snapshots (SIMFLAGS: e.g. --suite membership).
sim: build
	./$(BUILD)/test_raft_sim --seeds $(SEEDS) $(SIMFLAGS)

clean:
	rm -rf $(BUILD) $(ASAN) $(FUZZ)
