#!/usr/bin/env bash
# Run a command with the ROS 2 command line and launch system that `make ros2-tools` (or `make setup-test`) built
# into the test-only prefix build/ros2-tools-<distro>/ (when it exists), e.g.
#   tools/with_ros2_tools.sh ros2 service call /speak ros2_chatterbox/srv/Speak "{text: 'Hello'}"
#   tools/with_ros2_tools.sh --distro jazzy .venv-jazzy/bin/python -m pytest test/test_ros2_cli.py
# Where ROS 2 is installed and sourced, or no prefix was built, the command runs unchanged; a `ros2` that exists
# neither way is reported with the command that gets it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DISTRO=kilted
if [ "${1:-}" = "--distro" ]; then DISTRO=$2; shift 2; fi
ENV_FILE=$ROOT/build/ros2-tools-$DISTRO/env.sh
if [ -f "$ENV_FILE" ]; then
  # shellcheck source=/dev/null
  . "$ENV_FILE"
fi
if [ "$(basename -- "${1:-}")" = ros2 ] && ! command -v -- "$1" >/dev/null; then
  DISTRO_ARG=$([ "$DISTRO" = kilted ] || echo " ROS_DISTRO=$DISTRO")
  echo "ros2: the ROS 2 command line is not installed here: no ROS 2 installation is sourced and" \
       "build/ros2-tools-$DISTRO/ was not built. Get it with \`make ros2-tools$DISTRO_ARG\` (with" \
       "ROS2_CLI_SRC=<folder or .tar.gz> where github.com is out of reach), or source ROS 2" \
       "(source /opt/ros/<distro>/setup.bash)." >&2
  exit 127
fi
exec "$@"
