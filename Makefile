# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/demo.yaml

.PHONY: run native test test-workers bench bench-full bench-node bench-ingest bench-record bench-export \
        bench-retention bench-compare bench-relay bench-playback bench-console chromium lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[native]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,native]'
	touch $@ $(VENV)/.installed

# The RTP receive path compiled with mypyc (rtp/fast.py, rtp/reorder.py, rtp/psframe.py ->
# rtp/_fast_native, ...), the compiled demuxer's start code search in C (rtp/_startcode.c) and
# the UDP reader (sensing_node/transport/_drain.c), again whenever they change; without a C
# compiler the node runs them as pure Python.
NATIVE := $(VENV)/.native
$(NATIVE): rtp/fast.py rtp/reorder.py rtp/psframe.py rtp/_startcode.c \
           sensing_node/transport/_drain.c tools/build_native.py | $(VENV)/.installed
	$(BIN)/python tools/build_native.py
	touch $@

native: $(NATIVE)

run: $(VENV)/.installed $(NATIVE)
	@echo "Console: http://127.0.0.1:8080/ (sign in with the demo token, demo-token)"
	$(BIN)/sensing-node run -c $(CONFIG)

# `make test` runs the whole suite, then the media tests a second time with the streams in two
# media worker processes (media.workers: 2; tests/node/test_workers.py starts its own), bounded
# in all; `make test-workers` runs that second pass alone.
MEDIA_TESTS := tests/node/test_live.py tests/node/test_recording.py tests/node/test_cascade.py \
               tests/node/test_webrtc.py tests/node/test_trust.py tests/node/test_clock.py \
               tests/node/test_metrics.py

# The RTP receive path's tests run once more on the pure Python (as where nothing compiles).
PURE_TESTS := tests/rtp tests/node/test_rtp_fast_path.py tests/node/test_rtp_transport.py \
              tests/node/test_ingest_fast_path.py tests/node/test_ingest_resume.py \
              tests/node/test_single_port.py

test: $(VENV)/.installed-test $(NATIVE) chromium
	$(BIN)/python -m pytest -q
	SENSING_NODE_PURE_PYTHON=1 $(BIN)/python -m pytest -q $(PURE_TESTS)
	$(MAKE) --no-print-directory test-workers

test-workers: $(VENV)/.installed-test $(NATIVE)
	SENSING_NODE_TEST_WORKERS=2 timeout 1500 $(BIN)/python -m pytest -q $(MEDIA_TESTS)

# The figures a reviewer needs, about 4 minutes: registrations, keepalives, idle and memory (one
# round), and the whole node at 300 streams with and without recording, 1 and 2 media workers.
bench: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/run_all.py --quick

# Everything bench/run_all.py measures, three rounds, then the whole-node sweep (about 100 min).
bench-full: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/run_all.py

# The whole node: N = 100..500 simulated cameras over UDP and TCP, with and without recording,
# 1 and 2 media workers, against the bare loop in the same run (about 90 minutes; see
# bench/node_bench.py for options, e.g. ARGS="--overload" or ARGS="--quick").
bench-node: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/node_bench.py $(ARGS)

# Presets of bench-node: live ingest alone (one worker), and ingest against ingest + recording
# (UDP, 300 and 100 streams). Their results go to the "Whole node" section too.
bench-ingest: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/ingest.py $(ARGS)

bench-record: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/record.py $(ARGS)

# Export speed, retention sweep at 30 days x 300 channels. Their results go to the sections of
# docs/benchmarks.md named after them.

bench-export: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/export.py --cpu 1

bench-retention: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/retention.py

# Re-streaming to an upper platform, the whole node process: one camera to 1, 10 and 50 upstream
# sessions, 200 cameras to one each (about 10 minutes; see bench/relay.py for options). Its
# results go to the section of docs/benchmarks.md named after it.
bench-relay: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/relay.py

# Playback and download to an upper platform from a 300-channel store while 300 live streams
# come in, the whole node process: 50 playbacks at 1x, 10 downloads at 8x (a few minutes; see
# bench/playback.py for options). Its results go to the section of docs/benchmarks.md named
# after it.
bench-playback: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/playback.py

# Time to first frame in the console's live view, the whole node and headless Chromium: a
# channel already pulled, one not pulled, a 2x2 wall (under a minute; see bench/console.py for
# options). Its results go to the section of docs/benchmarks.md named after it.
bench-console: $(VENV)/.installed-test $(NATIVE) chromium
	$(BIN)/python bench/console.py

# The whole node, ingest and recording, on two commits alternately in one run (this tree's
# harness, each commit's node): make bench-compare BASE=<rev>
bench-compare: $(VENV)/.installed-test $(NATIVE)
	$(BIN)/python bench/compare.py --base $(BASE) --doc

# The browser tests (tests/browser) drive the system's Chromium through Playwright; Playwright's
# own browser download is not used. Installs the Debian package where apt-get can (as root),
# with a CJK font for channel names.
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
	  && [ "$$(id -u)" = 0 ] && { apt-get install -y -q chromium fonts-wqy-microhei \
	  || { apt-get update -q && apt-get install -y -q chromium fonts-wqy-microhei; }; } \
	  || echo "chromium is not installed (as root: apt-get install chromium);" \
	          "the browser tests will be skipped"; }

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m mypy sip rtp recorder

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis rtp/_*_native* rtp/_native__mypyc* \
	       rtp/_startcode.*.so sensing_node/transport/_drain.*.so
