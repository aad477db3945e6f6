#!/usr/bin/env bash
# Container entry point: the ROS 2 environment and the colcon workspace, then the command (CMD or arguments).
# Also installed as ros2-chatterbox-doctor (a symlink): `docker exec <container> ros2-chatterbox-doctor`.
set -e
# setup.bash reads unset variables and cannot run under `set -u`.
# shellcheck source=/dev/null
source "/opt/ros/${ROS_DISTRO:-humble}/setup.bash"
# shellcheck source=/dev/null
source /opt/ros2_chatterbox_ws/install/setup.bash
if [ "${0##*/}" = ros2-chatterbox-doctor ]; then
  exec python3 -m ros2_chatterbox.doctor "$@"
fi
exec "$@"
