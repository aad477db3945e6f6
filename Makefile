# ros2_chatterbox: `make run` speaks, `make test` checks. Both set up .venv/ first when needed.
# Every ROS process started here stays on this machine (loopback discovery) in its own domain.
SHELL := /bin/bash
# The pip-only set-up's ROS 2 distribution: kilted (.venv/) or, with `make test ROS_DISTRO=jazzy`, jazzy
# (.venv-jazzy/). Only a command-line value counts: a sourced ROS 2 shell's ROS_DISTRO does not pick the venv.
DISTRO := $(if $(filter command line,$(origin ROS_DISTRO)),$(ROS_DISTRO),kilted)
VENV ?= $(if $(filter kilted,$(DISTRO)),.venv,.venv-$(DISTRO))
PY := $(VENV)/bin/python
PARAMS ?= config/params.yaml
# ARGS: more ROS arguments for `make run` (after --params-file, so they win), e.g. ARGS="-p http.port:=8077";
# for `make http`, arguments of the HTTP program, e.g. ARGS="--port 8077"
ARGS ?=
PYTEST_ARGS ?=
# The ROS tests (node, action, launch, the command line and where it comes from): what CI also runs on Jazzy.
# Engine, HTTP, load and everything else does not depend on the ROS distribution and runs once, on Kilted.
ROS_TESTS ?= test/test_node.py test/test_node_lifecycle.py test/test_say_action.py test/test_launch.py \
	test/test_launch_failures.py test/test_ros2_cli.py test/test_say_cli.py \
	test/test_install.py test/test_setup_fresh_clone.py
SETUP := VENV=$(VENV) bash tools/setup_venv.sh --distro $(DISTRO)
# ROS2_CLI_SRC: where `make ros2-tools` takes the ROS 2 command line's release sources from (a folder or .tar.gz
# in the ../shared/ros2-cli/ layout; default: ../shared/ros2-cli/ when it exists, else the ros2-gbp downloads)
ROS2_TOOLS := VENV=$(VENV) ROS2_CLI_SRC="$(ROS2_CLI_SRC)" bash tools/ros2_tools.sh --distro $(DISTRO)
WITH_TOOLS := tools/with_ros2_tools.sh --distro $(DISTRO)
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE ?= 0

.PHONY: setup setup-test ros2-tools run http test test-ros bench clean help

help:
	@echo "make run [PARAMS=file] [ARGS='-p http.port:=8077']"
	@echo "                         set up if needed, then start the node (HTTP on 127.0.0.1:8004)"
	@echo "make test                set up if needed, then run the whole test suite (ROS_DISTRO=jazzy: on Jazzy)"
	@echo "make test-ros            only the ROS tests: node, action, launch and the ros2 command line"
	@echo "make http [PARAMS=file] [ARGS='--port 8077']"
	@echo "                         the HTTP server alone, without ROS"
	@echo "make ros2-tools          the ros2 command line and launch on a pip-only machine (test-only prefix;"
	@echo "                         ROS2_CLI_SRC=folder or .tar.gz of their release sources, else downloaded)"
	@echo "make bench               speed benchmark (CPU smoke run here; see bench/README.md for GPU)"
	@echo "make clean               remove the venv and build output"

setup:
	@$(SETUP)

setup-test:
	@$(SETUP) --test

ros2-tools: setup
	@$(ROS2_TOOLS)

# `make run` keeps its own fixed domain (42) unless you set ROS_DOMAIN_ID; tests pick a free one per run. It says
# which, as the line a second terminal pastes to reach the node.
run: setup
	@echo "[run] ROS domain $${ROS_DOMAIN_ID:-42}, discovery $$ROS_AUTOMATIC_DISCOVERY_RANGE. In a second terminal, first:"
	@echo "      export ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-42} ROS_AUTOMATIC_DISCOVERY_RANGE=$$ROS_AUTOMATIC_DISCOVERY_RANGE"
	ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-42} $(PY) -m ros2_chatterbox.tts_node --autostart --ros-args --params-file $(PARAMS) $(ARGS)

http: setup
	$(PY) -m ros2_chatterbox.http --params $(PARAMS) $(ARGS)

test: setup-test
	$(WITH_TOOLS) $(PY) -m pytest test $(PYTEST_ARGS)

test-ros: setup-test
	$(WITH_TOOLS) $(PY) -m pytest $(ROS_TESTS) $(PYTEST_ARGS)

bench: setup
	$(PY) bench/bench_turbo.py --tiny --out bench/results/cpu-smoke

clean:
	rm -rf .venv .venv-jazzy build install log .pytest_cache test-artifacts
