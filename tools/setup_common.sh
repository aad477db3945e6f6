# shellcheck shell=bash
# What tools/setup_venv.sh and tools/ros2_tools.sh share: [setup] lines, stamps, pip, CMake builds into a prefix.
# Sourced, not run, after the caller set ROOT (the checkout) and, to choose another venv, VENV.

log() { printf '[setup] %s\n' "$*"; }

# for_distro DISTRO: ROS_REQ (the distribution's ROS 2 wheels) and VENV (absolute; by default .venv/ for Kilted,
# .venv-<distro>/ for the others)
# shellcheck disable=SC2034  # ROS_REQ is read by the scripts that source this
for_distro() {
  case $1 in
    kilted) ROS_REQ=$ROOT/requirements/ros.txt; VENV=${VENV:-$ROOT/.venv} ;;
    jazzy) ROS_REQ=$ROOT/requirements/ros-jazzy.txt; VENV=${VENV:-$ROOT/.venv-jazzy} ;;
    *) echo "the pip-only set-up builds ROS 2 kilted or jazzy, not '$1'" >&2; exit 2 ;;
  esac
  VENV=$(realpath -m "$VENV")  # absolute: it ends up in installed executables' first line
}

# stamp_ok STAMP FILES... : true when STAMP holds the checksum of FILES (the stage is done already)
stamp_ok() { local f=$1; shift; [ -f "$f" ] && [ "$(cat "$@" | sha256sum)" = "$(cat "$f")" ]; }
stamp_set() { local f=$1; shift; cat "$@" | sha256sum > "$f"; }

# pip_install ARGS...: quiet pip, without the noise of local-index warnings ("is ignored: it is neither ...")
pip_install() {
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  return "${PIPESTATUS[0]}"
}

# Signs of life while a long stage runs: every 30 s a line with the time taken and the venv's size so far.
HEARTBEAT_PID=
heartbeat_start() {  # heartbeat_start WHAT
  local what=$1 start=$SECONDS
  # (the sleep is ended with the loop and holds no output open: a piped `make setup | tee` ends at once)
  ( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 30 >/dev/null 2>&1 & nap=$!
      wait "$nap"
      log "  ... still $what ($(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s;" \
          "${VENV##*/}/ is $(du -sh "$VENV" 2>/dev/null | cut -f1) so far)"
    done ) &
  HEARTBEAT_PID=$!
}
heartbeat_stop() {
  if [ -n "$HEARTBEAT_PID" ]; then
    kill "$HEARTBEAT_PID" 2>/dev/null || true
    wait "$HEARTBEAT_PID" 2>/dev/null || true
  fi
  HEARTBEAT_PID=
}
trap heartbeat_stop EXIT

# pip_install_shown WHAT ARGS...: pip for a big stage: each download of 10 MB or more is shown as it starts, a
# heartbeat line every 30 s; pip's whole output goes to $VENV/pip-last.log (shown when pip fails).
pip_install_shown() {
  local what=$1 line rc pip_log=$VENV/pip-last.log
  shift
  heartbeat_start "$what"
  set +e
  "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 | tee "$pip_log" |
    while IFS= read -r line; do
      if [[ $line =~ ^\ *Downloading\ (.*)\ \(([0-9]+)(\.[0-9]+)?\ (MB|GB)\)$ ]] &&
         { [ "${BASH_REMATCH[4]}" = GB ] || [ "${BASH_REMATCH[2]}" -ge 10 ]; }; then
        log "  downloading ${BASH_REMATCH[1]##*/} (${BASH_REMATCH[2]}${BASH_REMATCH[3]} ${BASH_REMATCH[4]})"
      fi
    done
  rc=${PIPESTATUS[0]}
  set -e
  heartbeat_stop
  if [ "$rc" != 0 ]; then
    grep -v 'is ignored: it is neither' "$pip_log" | tail -30
    log "pip failed ($what); its whole output: $pip_log"
  fi
  return "$rc"
}

# build_pkg NAME SRC_DIR [INSTALL_PREFIX (default: the venv)]: CMake build against the venv's ROS 2, in
# ${BUILD_ROOT:-$VENV/build}/NAME (its log beside it)
build_pkg() {
  local name=$1 src=$2 prefix=${3:-$VENV} build="${BUILD_ROOT:-$VENV/build}/$1"
  log "building $name"
  mkdir -p "${build%/*}"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
  if ! { cmake -S "$src" -B "$build" -DCMAKE_INSTALL_PREFIX="$prefix" -DPython3_EXECUTABLE="$VENV/bin/python" \
           -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release -Wno-dev >"$build.log" 2>&1 &&
         cmake --build "$build" -j"$(nproc)" >>"$build.log" 2>&1 &&
         cmake --install "$build" >>"$build.log" 2>&1; }; then
    tail -40 "$build.log"
    log "building $name failed; full log: $build.log"
    exit 1
  fi
}
