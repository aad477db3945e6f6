#!/usr/bin/env bash
# Start the ros2_chatterbox container on a Jetson (JetPack 6.x) with the host's native CUDA libraries.
#
# NVIDIA's generic ARM images carry SBSA (server ARM) builds of cuBLAS, cuBLASLt, cuFFT, cuFFTW and cuDNN. On an
# Orin they load and then fail (CUBLAS_STATUS_ALLOC_FAILED, "GET was unable to find an engine",
# CUFFT_INTERNAL_ERROR). This script finds the host's own builds of those libraries, pairs each with its SBSA twin
# listed in the image's manifest (written at build time by write-sbsa-manifest.sh) by library name and soname,
# and bind-mounts native over SBSA, read-only. It contains no version numbers: the pairs come from the host and
# the manifest, so the same script works on every JetPack 6.x.
#
#   docker/start-gpu.sh [options] [-- extra docker run arguments]
#   docker/start-gpu.sh --dry-run        # print the docker run command instead of running it
#
# Environment: JETSON_HOST_ROOT (default /) is the root under which the host libraries are looked up (tests use a
# fake tree); HF_TOKEN is passed to the container by name (-e HF_TOKEN), never written on the command line.
#
# Exit status: 0 started (or printed), 1 docker failed, 2 usage error, 3 a library has no native twin on the
# host (or its major version differs), 4 the manifest could not be read.
set -euo pipefail

readonly MANIFEST_IN_IMAGE=/usr/local/share/ros2_chatterbox/sbsa-manifest.tsv
# Library names (file name up to ".so") that are replaced. cuDNN 9 splits into libcudnn_adv, _cnn,
# _engines_precompiled, _engines_runtime_compiled, _graph, _heuristic, _ops; cuDNN 8 into libcudnn_adv_infer,
# _adv_train, _cnn_infer, _cnn_train, _ops_infer, _ops_train. The manifest says which ones the image has.
readonly LIBRARY_RE='^lib(cublas|cublasLt|cufft|cufftw|cudnn|cudnn_[a-z_]+)$'

IMAGE=${CHATTERBOX_IMAGE:-ros2-chatterbox:jetson}
NAME=ros2-chatterbox
PORT=8004
HTTP_HOST=127.0.0.1
NETWORK=host
VOICES=ros2-chatterbox-voices   # a directory, or the name of a docker volume
MODELS=ros2-chatterbox-models   # Hugging Face cache (HF_HOME) inside the container
PARAMS=""
MANIFEST=""
HF_TOKEN_FILE=""
COMPOSE_OVERRIDE=""
DRY_RUN=0
DETACH=0
SOUND=0
ALLOW_MISSING=0
NATIVE_LIBS=1
DOCTOR=0
EXTRA=()

usage() {
  cat <<'EOF'
Usage: docker/start-gpu.sh [options] [-- extra docker run arguments]

  --image IMAGE          image to run (default: $CHATTERBOX_IMAGE or ros2-chatterbox:jetson)
  --name NAME            container name (default: ros2-chatterbox)
  --port PORT            HTTP port (parameter http.port; default 8004)
  --http-host ADDR       HTTP bind address in the container (default 127.0.0.1: with host networking that is
                         the host's loopback; use 0.0.0.0 to serve the LAN, and set http.api_key in --params)
  --network MODE         docker network (default host, which ROS 2 discovery needs; otherwise -p PORT is published)
  --voices DIR|VOLUME    reference voices, mounted at /voices (default: volume ros2-chatterbox-voices)
  --models DIR|VOLUME    model cache, mounted at /models (default: volume ros2-chatterbox-models)
  --params FILE          parameter file mounted over /etc/ros2_chatterbox/params.yaml (read-only)
  --hf-token-file FILE   read the Hugging Face token from FILE (otherwise HF_TOKEN from the environment)
  --sound                pass the host's sound devices through (/dev/snd, group audio)
  --manifest FILE        SBSA manifest to pair with (default: read from the image)
  --allow-missing        start even when a library has no native twin (the SBSA copy then stays)
  --no-native-libs       mount nothing (to reproduce SBSA failures)
  --caching-allocator    accepted for old scripts: PyTorch's caching allocator is always on now (the engine's
                         CUDA graphs need it; PYTORCH_NO_CUDA_MEMORY_CACHING makes the engine refuse its fast path)
  --compose-override F   also write the discovered mounts as a compose override file for service
                         ros2-chatterbox (docker compose -f docker/compose.yaml -f F up)
  --detach               run in the background (default: foreground, as systemd wants)
  --doctor               run ros2-chatterbox-doctor in the container (same mounts) instead of the node
  --dry-run              print the docker run command and exit
  -h, --help             this help

Environment: JETSON_HOST_ROOT (default /), HF_TOKEN, CHATTERBOX_IMAGE; ROS_DOMAIN_ID, ROS_LOCALHOST_ONLY,
RMW_IMPLEMENTATION and CHATTERBOX_JETSON_PATCHES are passed through when set.
EOF
}

die() { local code=$1; shift; printf 'start-gpu.sh: %s\n' "$*" >&2; exit "$code"; }
note() { printf 'start-gpu.sh: %s\n' "$*" >&2; }
need_value() { [ "$#" -ge 2 ] && [ -n "$2" ] || die 2 "$1 needs a value (see --help)"; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --image) need_value "$@"; IMAGE=$2; shift 2 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --port) need_value "$@"; PORT=$2; shift 2 ;;
    --http-host) need_value "$@"; HTTP_HOST=$2; shift 2 ;;
    --network) need_value "$@"; NETWORK=$2; shift 2 ;;
    --voices) need_value "$@"; VOICES=$2; shift 2 ;;
    --models) need_value "$@"; MODELS=$2; shift 2 ;;
    --params) need_value "$@"; PARAMS=$2; shift 2 ;;
    --hf-token-file) need_value "$@"; HF_TOKEN_FILE=$2; shift 2 ;;
    --manifest) need_value "$@"; MANIFEST=$2; shift 2 ;;
    --compose-override) need_value "$@"; COMPOSE_OVERRIDE=$2; shift 2 ;;
    --sound) SOUND=1; shift ;;
    --allow-missing) ALLOW_MISSING=1; shift ;;
    --no-native-libs) NATIVE_LIBS=0; shift ;;
    --caching-allocator) shift ;;
    --detach) DETACH=1; shift ;;
    --doctor) DOCTOR=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die 2 "unknown option '$1' (see --help)" ;;
  esac
done
case "$PORT" in ''|*[!0-9]*) die 2 "--port must be a number, not '$PORT'" ;; esac
# The doctor runs beside a running node: another name, and no detaching (its report is the point).
if [ "$DOCTOR" = 1 ]; then
  [ "$NAME" = ros2-chatterbox ] && NAME=ros2-chatterbox-doctor
  DETACH=0
fi

HOST_ROOT=${JETSON_HOST_ROOT:-/}
HOST_ROOT=${HOST_ROOT%/}
# Where JetPack puts the native builds: the CUDA toolkit's Tegra target, and the distribution library folder
# (cuDNN). /usr/local/cuda is a symlink to the installed version, so nothing here names a version.
HOST_DIRS=("$HOST_ROOT/usr/local/cuda/targets/aarch64-linux/lib" "$HOST_ROOT/lib/aarch64-linux-gnu")

if [ "$DRY_RUN" = 0 ] && [ ! -e "$HOST_ROOT/etc/nv_tegra_release" ]; then
  note "warning: $HOST_ROOT/etc/nv_tegra_release not found: this does not look like a Jetson (L4T) host." \
       "On x86_64 run docker/Dockerfile.cuda's image with 'docker run --gpus all'."
fi

# --- the manifest: name<TAB>soname<TAB>path of each SBSA library in the image ---------------------------------
manifest_text=""
if [ "$NATIVE_LIBS" = 1 ]; then
  if [ -n "$MANIFEST" ]; then
    [ -r "$MANIFEST" ] || die 4 "cannot read manifest '$MANIFEST'"
    manifest_text=$(cat "$MANIFEST")
  else
    command -v docker >/dev/null || die 4 "docker not found; pass --manifest FILE to pair without it"
    manifest_text=$(docker run --rm --entrypoint cat "$IMAGE" "$MANIFEST_IN_IMAGE") \
      || die 4 "could not read $MANIFEST_IN_IMAGE from image '$IMAGE' (build or pull it first; an image" \
               "built from this repository's docker/Dockerfile.jetson has it)"
  fi
  case "$manifest_text" in
    '#'*) ;;
    *) die 4 "the manifest does not start with its '#' header line: not a manifest written by write-sbsa-manifest.sh" ;;
  esac
fi

# soname_of NAME FILE: the soname a library file answers to, lib<name>.so.<major>, from its file name.
soname_of() {
  local rest=${2##*/}
  rest=${rest#"$1".so.}
  printf '%s.so.%s\n' "$1" "${rest%%.*}"
}

# host_versions NAME: the lib<name>.so.* files of the host, for error messages.
host_versions() {
  local dir found=()
  for dir in "${HOST_DIRS[@]}"; do
    for f in "$dir/$1".so.*; do
      [ -e "$f" ] && found+=("${f##*/}")
    done
  done
  printf '%s' "${found[*]:-}"
}

# advice NAME: what to install when a library is missing on the host.
advice() {
  case "$1" in
    libcudnn*) printf 'install cuDNN from JetPack (sudo apt install nvidia-cudnn, or sudo apt install nvidia-jetpack)' ;;
    *) printf 'install the CUDA libraries from JetPack (sudo apt install nvidia-cuda, or sudo apt install nvidia-jetpack)' ;;
  esac
}

MOUNTS=()     # host:container:ro
PAIRS=()      # human-readable lines
PROBLEMS=()
declare -A SEEN=()
while IFS=$'\t' read -r name soname path _; do
  case "$name" in ''|'#'*) continue ;; esac
  [[ "$name" =~ $LIBRARY_RE ]] || continue
  [ -n "$path" ] || { PROBLEMS+=("$name: manifest line without a path"); continue; }
  [ -n "${SEEN[$path]:-}" ] && continue
  SEEN[$path]=1
  [ -n "$soname" ] || soname=$(soname_of "$name" "$path")
  host=""
  for dir in "${HOST_DIRS[@]}"; do
    if [ -e "$dir/$soname" ]; then
      host=$(readlink -f "$dir/$soname")
      break
    fi
  done
  if [ -n "$host" ] && [ -f "$host" ]; then
    MOUNTS+=("$host:$path:ro")
    PAIRS+=("$(printf '%-34s %s -> %s' "$name" "$host" "$path")")
    continue
  fi
  have=$(host_versions "$name")
  if [ -n "$have" ]; then
    PROBLEMS+=("$name: the image needs $soname but the host has only: $have. The image was built for another
      JetPack: rebuild docker/Dockerfile.jetson on this one (or pull the tag built for it)")
  else
    PROBLEMS+=("$name: no native $soname under ${HOST_DIRS[*]}; $(advice "$name")")
  fi
done <<< "$manifest_text"

if [ "$NATIVE_LIBS" = 1 ]; then
  if [ "${#PAIRS[@]}" -gt 0 ]; then
    note "native libraries mounted over the image's SBSA builds:"
    for line in "${PAIRS[@]}"; do note "  $line"; done
  else
    note "the image's manifest lists no SBSA library: nothing to mount"
  fi
fi
if [ "${#PROBLEMS[@]}" -gt 0 ]; then
  note "missing native libraries (${#PROBLEMS[@]}):"
  for line in "${PROBLEMS[@]}"; do note "  $line"; done
  if [ "$ALLOW_MISSING" = 0 ]; then
    die 3 "not starting: the SBSA copies of these would fail on the GPU. Fix the above, or pass --allow-missing"
  fi
  note "--allow-missing: starting anyway; the SBSA copies stay for the libraries above"
fi

# --- the docker run command -------------------------------------------------------------------------------------
if [ -n "$HF_TOKEN_FILE" ]; then
  [ -r "$HF_TOKEN_FILE" ] || die 2 "cannot read --hf-token-file '$HF_TOKEN_FILE'"
  # Into this process's environment only: docker copies it by name (-e HF_TOKEN), so the token appears in no
  # command line, no process list and no dry-run output.
  HF_TOKEN=$(tr -d '[:space:]' < "$HF_TOKEN_FILE")
  export HF_TOKEN
fi

cmd=(docker run --rm --name "$NAME" --runtime nvidia --init)
[ "$DETACH" = 1 ] && cmd+=(--detach)
if [ "$NETWORK" = host ]; then
  # ROS 2 discovery and shared-memory transport with the robot's other nodes need the host's network and IPC.
  cmd+=(--network host --ipc host)
else
  cmd+=(--network "$NETWORK" -p "$PORT:$PORT")
fi
for m in "${MOUNTS[@]}"; do cmd+=(-v "$m"); done
cmd+=(-v "$VOICES:/voices" -v "$MODELS:/models")
if [ -n "$PARAMS" ]; then
  [ -r "$PARAMS" ] || die 2 "cannot read --params '$PARAMS'"
  cmd+=(-v "$(readlink -f "$PARAMS"):/etc/ros2_chatterbox/params.yaml:ro")
fi
# No PYTORCH_NO_CUDA_MEMORY_CACHING: the reference container set it because the caching allocator fragmented
# Jetson's unified memory; here the engine allocates its working memory at configure and reuses it, and its CUDA
# graphs cannot be captured without the allocator (the engine refuses its fast path when the variable is set).
cmd+=(-e "CHATTERBOX_HTTP_PORT=$PORT")
[ -n "${HF_TOKEN:-}" ] && cmd+=(-e HF_TOKEN)
for var in ROS_DOMAIN_ID ROS_LOCALHOST_ONLY RMW_IMPLEMENTATION CHATTERBOX_JETSON_PATCHES; do
  [ -n "${!var:-}" ] && cmd+=(-e "$var")
done
if [ "$SOUND" = 1 ]; then
  cmd+=(--device /dev/snd --group-add audio)
fi
cmd+=("${EXTRA[@]}")
if [ "$DOCTOR" = 1 ]; then
  cmd+=("$IMAGE" ros2-chatterbox-doctor)
else
  cmd+=("$IMAGE" ros2 run ros2_chatterbox tts_node --autostart --ros-args
        --params-file /etc/ros2_chatterbox/params.yaml -p "http.host:=$HTTP_HOST" -p "http.port:=$PORT")
fi

if [ -n "$COMPOSE_OVERRIDE" ]; then
  {
    echo "# Written by docker/start-gpu.sh: native CUDA libraries of this host over the image's SBSA builds."
    echo "services:"
    echo "  ros2-chatterbox:"
    echo "    volumes:"
    for m in "${MOUNTS[@]}"; do printf '      - "%s"\n' "$m"; done
    [ "${#MOUNTS[@]}" -gt 0 ] || echo "      []"
  } > "$COMPOSE_OVERRIDE"
  note "wrote $COMPOSE_OVERRIDE"
fi

if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi
if [ "$HTTP_HOST" != 127.0.0.1 ] && [ "$HTTP_HOST" != localhost ]; then
  note "HTTP binds $HTTP_HOST: set http.api_key in the --params file so that the API is not open to the network"
fi
exec "${cmd[@]}"
