# ros2_chatterbox: `make run` speaks, `make test` checks. Both set up .venv/ first when needed.
# Every ROS process started here stays on this machine (loopback discovery) in its own domain.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PARAMS ?= config/params.yaml
PYTEST_ARGS ?=
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE ?= 0

.PHONY: setup setup-test run http test test-fast bench lint clean help

help:
	@echo "make run [PARAMS=file]   set up if needed, then start the node (HTTP on 127.0.0.1:8004)"
	@echo "make test                set up if needed, then run the whole test suite"
	@echo "make http [PARAMS=file]  the HTTP server alone, without ROS"
	@echo "make bench               speed benchmark (CPU smoke run here; see bench/README.md for GPU)"
	@echo "make clean               remove the venv and build output"

setup:
	@bash tools/setup_venv.sh

setup-test:
	@bash tools/setup_venv.sh --test

run: setup
	$(PY) -m ros2_chatterbox.tts_node --autostart --ros-args --params-file $(PARAMS)

http: setup
	$(PY) -m ros2_chatterbox.http --params $(PARAMS)

test: setup-test
	$(PY) -m pytest test $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bench_turbo.py --tiny --out bench/results/cpu-smoke

clean:
	rm -rf $(VENV) build install log .pytest_cache test-artifacts
