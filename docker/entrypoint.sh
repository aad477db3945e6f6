#!/usr/bin/env bash
# Container entry point: the ROS 2 environment and the colcon workspace, then the command (CMD or arguments).
# Also installed as ros2-chatterbox-doctor (a symlink): `docker exec <container> ros2-chatterbox-doctor`.
#
# API key: a command that binds the HTTP server beyond loopback (`-p http.host:=0.0.0.0`, the images' default CMD,
# reachable through `docker run -p 8004:8004`) while the environment holds no key (CHATTERBOX_API_KEY,
# CHATTERBOX_API_KEY_FILE) gets one: generated once into the /models volume, printed once, and handed to the node as
# CHATTERBOX_API_KEY_FILE. A key in the parameter file (http.api_key, http.api_key_file) takes precedence; a
# parameter file with `allow_unauthenticated_lan: true` opts out. The node itself refuses an unauthenticated LAN bind.
set -e

# The last `http.host:=ADDR` among the arguments ('' when none).
http_host() {
  local host="" arg
  for arg in "$@"; do
    case $arg in http.host:=*) host=${arg#http.host:=} ;; esac
  done
  printf '%s' "$host"
}

# Whether a parameter file named in the arguments (--params-file FILE) opts out of the key.
opted_out() {
  local previous="" arg
  for arg in "$@"; do
    if [ "$previous" = --params-file ] && [ -r "$arg" ] &&
       grep -Eq '^[^#]*allow_unauthenticated_lan:[[:space:]]*true' "$arg"; then
      return 0
    fi
    previous=$arg
  done
  return 1
}

# Export CHATTERBOX_API_KEY_FILE (generating the key once) when the command serves beyond loopback without a key.
ensure_api_key() {
  local host store
  host=$(http_host "$@")
  case $host in "" | 127.* | localhost | ::1 | "[::1]") return 0 ;; esac
  if [ -n "${CHATTERBOX_API_KEY:-}" ] || [ -n "${CHATTERBOX_API_KEY_FILE:-}" ] || opted_out "$@"; then
    return 0
  fi
  store=${CHATTERBOX_API_KEY_STORE:-/models/ros2_chatterbox_api_key}
  if ! (umask 077 && mkdir -p "$(dirname "$store")" && touch "$store") 2>/dev/null; then
    store=${HOME:-/tmp}/.ros2_chatterbox_api_key
  fi
  if [ ! -s "$store" ]; then
    (umask 077 && head -c 24 /dev/urandom | base64 | tr '+/' '-_' > "$store")
    echo "ros2_chatterbox: HTTP on $host needs an API key; generated one, shown only now (kept in $store):" >&2
    echo "ros2_chatterbox:   Authorization: Bearer $(cat "$store")" >&2
  fi
  chmod 600 "$store"
  export CHATTERBOX_API_KEY_FILE=$store
}

# Sourced (by the tests): define the functions only.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  return 0
fi

ensure_api_key "$@"
# setup.bash reads unset variables and cannot run under `set -u`.
# shellcheck source=/dev/null
source "/opt/ros/${ROS_DISTRO:-humble}/setup.bash"
# shellcheck source=/dev/null
source /opt/ros2_chatterbox_ws/install/setup.bash
if [ "${0##*/}" = ros2-chatterbox-doctor ]; then
  exec python3 -m ros2_chatterbox.doctor "$@"
fi
exec "$@"
