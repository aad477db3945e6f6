#!/usr/bin/env bash
# Write the manifest of an image's SBSA (server ARM) CUDA libraries, at image build time.
#
#   write-sbsa-manifest.sh OUT [DIR ...]
#
# One line per library file (symlinks resolved, each real file once): name<TAB>soname<TAB>path, for cuBLAS,
# cuBLASLt, cuFFT, cuFFTW and every cuDNN library found in the DIRs (default: the CUDA toolkit's sbsa-linux target
# and /usr/lib/aarch64-linux-gnu). docker/start-gpu.sh pairs each line with the host's native build by name and
# soname and mounts that over `path`, and the doctor flags loaded libraries listed here.
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 OUT [DIR ...]" >&2; exit 2; }
out=$1
shift
dirs=("$@")
[ "${#dirs[@]}" -gt 0 ] || dirs=(/usr/local/cuda/targets/sbsa-linux/lib /usr/lib/aarch64-linux-gnu)
readonly LIBRARY_RE='^lib(cublas|cublasLt|cufft|cufftw|cudnn|cudnn_[a-z_]+)$'

# soname from the ELF header when binutils is there, else from the file name (lib<name>.so.<major>...).
soname_of() {
  local name=$1 file=$2 soname="" rest
  if command -v readelf >/dev/null; then
    soname=$(readelf -d "$file" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p' | head -n 1)
  fi
  if [ -z "$soname" ]; then
    rest=${file##*/}
    rest=${rest#"$name".so.}
    soname="$name.so.${rest%%.*}"
  fi
  printf '%s\n' "$soname"
}

mkdir -p "$(dirname "$out")"
declare -A seen=()
{
  printf '# ros2_chatterbox SBSA manifest v1 (name, soname, path), written %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for dir in "${dirs[@]}"; do
    [ -d "$dir" ] || continue
    for file in "$dir"/libcublas*.so* "$dir"/libcufft*.so* "$dir"/libcudnn*.so*; do
      [ -e "$file" ] || continue
      real=$(readlink -f "$file")
      [ -f "$real" ] && [ -z "${seen[$real]:-}" ] || continue
      base=${real##*/}
      name=${base%%.so*}
      [[ "$name" =~ $LIBRARY_RE ]] || continue
      # Versioned files only: an unversioned libfoo.so is a development link, never what a program loads.
      [[ "$base" == "$name".so.* ]] || continue
      seen[$real]=1
      printf '%s\t%s\t%s\n' "$name" "$(soname_of "$name" "$real")" "$real"
    done
  done
} > "$out"
echo "wrote $out: $(($(wc -l < "$out") - 1)) libraries" >&2
