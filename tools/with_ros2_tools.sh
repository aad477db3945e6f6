#!/usr/bin/env bash
# Run a command with the ROS 2 command line and launch system that `make setup-test` built into the test-only
# prefix build/ros2-tools-<distro>/ (when it exists), e.g.
#   tools/with_ros2_tools.sh ros2 service call /speak ros2_chatterbox/srv/Speak "{text: 'Hello'}"
#   tools/with_ros2_tools.sh --distro jazzy .venv-jazzy/bin/python -m pytest test/test_ros2_cli.py
# Where ROS 2 is installed and sourced, or no prefix was built, the command runs unchanged.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DISTRO=kilted
if [ "${1:-}" = "--distro" ]; then DISTRO=$2; shift 2; fi
ENV_FILE=$ROOT/build/ros2-tools-$DISTRO/env.sh
if [ -f "$ENV_FILE" ]; then
  # shellcheck source=/dev/null
  . "$ENV_FILE"
fi
exec "$@"
