#!/usr/bin/env bash
# The ROS 2 command line (`ros2` and its verbs) and launch system (launch, launch_ros, launch_testing, ros2launch)
# on a pip-only machine, where they are not on PyPI: their release sources, pinned per package in
# requirements/ros2-cli-<distro>.txt, taken from ROS2_CLI_SRC (a folder or .tar.gz in the ../shared/ros2-cli/
# layout; default: ../shared/ros2-cli/ beside the checkout, when it exists) or else downloaded from the ros2-gbp
# release archives, each package verified against its pinned tree hash (tools/ros2_cli_sources.py), then installed
# into the TEST-ONLY prefix build/ros2-tools-<distro>/ (never into the venv that `make run` uses; on a robot, ROS 2's
# own installation provides these tools). tools/with_ros2_tools.sh runs a command with them.
# Nothing to do where ROS 2 is installed (ros2cli and launch importable by the venv's interpreter).
#   tools/ros2_tools.sh [--distro kilted|jazzy] [--optional] [--prefix DIR]      (make ros2-tools; make setup-test)
# Sources that differ from their pins are refused (exit 1). When no sources can be had, one [setup] line says what
# is unavailable and how to get it: exit 0 with --optional (make setup-test: set-up goes on), else 1.
set -euo pipefail
shopt -s nullglob
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DISTRO=kilted
OPTIONAL=0
PREFIX=
while [ $# -gt 0 ]; do
  case $1 in
    --distro) DISTRO=$2; shift ;;
    --optional) OPTIONAL=1 ;;
    --prefix) PREFIX=$2; shift ;;
    *) echo "usage: $0 [--distro kilted|jazzy] [--optional] [--prefix DIR]" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=tools/setup_common.sh
. "$ROOT/tools/setup_common.sh"
for_distro "$DISTRO"
TOOLS=$(realpath -m "${PREFIX:-$ROOT/build/ros2-tools-$DISTRO}")
PINS=$ROOT/requirements/ros2-cli-$DISTRO.txt
DISTRO_ARG=$([ "$DISTRO" = kilted ] || echo " ROS_DISTRO=$DISTRO")  # what make needs for this distro

if [ ! -x "$VENV/bin/python" ]; then
  log "no $VENV yet: run \`make setup$DISTRO_ARG\` first (\`make ros2-tools$DISTRO_ARG\` does)"
  exit 1
fi
# A ROS 2 installation (sourced) has its own: use those. (Our own prefix on PYTHONPATH does not count.)
INSTALLED=$("$VENV/bin/python" -c 'import launch_testing, launch_ros, ros2cli; print(ros2cli.__file__)' \
            2>/dev/null) || true
if [ -n "$INSTALLED" ] && [[ $INSTALLED != "$TOOLS"/* ]]; then
  log "ROS 2 command line and launch: the installed ones (${INSTALLED%/ros2cli/*})"
  exit 0
fi

STAMP_INPUTS=("$PINS" "$ROOT/requirements/ros2-tools.txt" "$ROS_REQ" "$ROOT/tools/ros2_tools.sh")
if stamp_ok "$TOOLS/.stamp" "${STAMP_INPUTS[@]}" <("$VENV/bin/python" --version); then
  exit 0
fi

SRC=${ROS2_CLI_SRC:-}
if [ -n "$SRC" ]; then
  SRC=$(realpath -m "$SRC")
  if [ ! -e "$SRC" ]; then log "ROS2_CLI_SRC=$SRC: no such file or folder"; exit 1; fi
elif [ -d "$ROOT/../shared/ros2-cli" ]; then
  SRC=$(realpath "$ROOT/../shared/ros2-cli")
fi
# Everything is built in a staging folder and then takes the prefix's place in one rename: a failed download or
# build leaves an existing prefix as it was, and commands using it meanwhile keep working.
mkdir -p "$(dirname "$TOOLS")"
STAGE=$(mktemp -d "$(dirname "$TOOLS")/.$(basename "$TOOLS").XXXXXX")
NEW=$STAGE/prefix  # becomes $TOOLS
trap 'heartbeat_stop; rm -rf "$STAGE"' EXIT
rc=0
REASON=$("$VENV/bin/python" "$ROOT/tools/ros2_cli_sources.py" fetch --pins "$PINS" --dest "$STAGE/src" \
         --distro "$DISTRO" ${SRC:+--src "$SRC"}) || rc=$?
if [ "$rc" = 3 ]; then
  log "the ros2 command line and launch are not installed (no ROS 2 installation, no ROS2_CLI_SRC," \
      "no ../shared/ros2-cli/, and $REASON): the README's \`ros2 ...\` commands and the CLI and launch" \
      "tests (test/test_ros2_cli.py, test/test_launch*.py) are unavailable and skip;" \
      "\`make ros2-tools$DISTRO_ARG ROS2_CLI_SRC=<folder or .tar.gz>\` (or a network that reaches" \
      "github.com, or a sourced ROS 2 installation) provides them"
  [ "$OPTIONAL" = 1 ] && exit 0
  exit 1
elif [ "$rc" != 0 ]; then
  exit "$rc"  # refused: tools/ros2_cli_sources.py said why
fi
printf '%s\n' "$REASON"

log "ROS 2 $DISTRO command line and launch (test-only) into ${TOOLS#"$ROOT"/} (~30 s)"
mkdir -p "$NEW/bin"
mv "$STAGE/src" "$NEW/src"
PURE=()
for d in "$NEW"/src/*/; do [ "$(basename "$d")" = composition_interfaces ] || PURE+=("$d"); done
# (--no-compile: bytecode written here would name the staging paths)
pip_install --no-deps --no-build-isolation --no-compile --target "$NEW/site" "${PURE[@]}" \
  -r "$ROOT/requirements/ros2-tools.txt"
# configured for its final place, installed into the staging folder
DESTDIR=$STAGE/destdir BUILD_ROOT=$NEW/build build_pkg composition_interfaces "$NEW/src/composition_interfaces" \
  "$TOOLS/prefix"
mv "$STAGE/destdir$TOOLS/prefix" "$NEW/prefix"
SITE=$(cd "$NEW/prefix" && echo lib/python3*/site-packages)
printf '#!%s\n"""The ROS 2 command line (test-only prefix)."""\nimport sys\n\nfrom ros2cli.cli import main\n\nsys.exit(main())\n' \
  "$VENV/bin/python" > "$NEW/bin/ros2"
chmod +x "$NEW/bin/ros2"
# tools/with_ros2_tools.sh sources this to run a command with the tools
cat > "$NEW/env.sh" <<ENV
export PATH="$TOOLS/bin:$VENV/bin:\$PATH"
export PYTHONPATH="$TOOLS/site:$TOOLS/prefix/$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$TOOLS/prefix/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$TOOLS/prefix:$TOOLS/site:$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
ENV
stamp_set "$NEW/.stamp" "${STAMP_INPUTS[@]}" <("$VENV/bin/python" --version)
if [ -e "$TOOLS" ]; then mv "$TOOLS" "$STAGE/old"; fi
mv "$NEW" "$TOOLS"
log "ros2 command line ready: tools/with_ros2_tools.sh$([ "$DISTRO" = kilted ] || echo " --distro $DISTRO") ros2 --help"
