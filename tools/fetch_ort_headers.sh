#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ headers (Debian trixie's libonnxruntime-dev) into .cache/onnxruntime/include,
# using a PRIVATE apt state under .cache/apt: nothing is installed system-wide.  The mirror is read from
# the system's own apt configuration.  pip install then builds the native kernels (custom_ops/) against
# them; QEXPORT_ORT_INCLUDE can point the build at another include/ folder instead.
# Idempotent; on any failure it says so and exits 0, so set-up continues without the native kernels.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/onnxruntime"
if [ -f "$dest/include/onnxruntime_c_api.h" ]; then echo "onnxruntime headers: $dest/include (cached)"; exit 0; fi
fail() { echo "fetch_ort_headers: $1; the native kernels will not be built (function bodies run instead)" >&2; exit 0; }
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || fail "apt-get / dpkg-deb not found"
uri=$(grep -hs -E '^\s*URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)
[ -n "$uri" ] || uri=$(grep -hs -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | grep -v security | awk '{for(i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}')
[ -n "$uri" ] || fail "no Debian mirror in /etc/apt"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || fail "no Debian archive keyring"
state="$root/.cache/apt"
rm -rf "$state" && mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/deb"
: > "$state/status"
echo "deb [signed-by=$keyring] $uri trixie main" > "$state/sources.list"
opts=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$state/lists"
      -o "Dir::State::Status=$state/status" -o "Dir::Cache=$state/cache" -o Debug::NoLocking=1)
apt-get -qq "${opts[@]}" update >/dev/null 2>&1 || fail "apt-get update of trixie from $uri failed"
(cd "$state/deb" && apt-get -qq "${opts[@]}" download libonnxruntime-dev >/dev/null 2>&1) || fail "download of libonnxruntime-dev failed"
deb=$(ls "$state/deb"/libonnxruntime-dev_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || fail "no libonnxruntime-dev .deb downloaded"
dpkg-deb -x "$deb" "$state/x" || fail "dpkg-deb -x failed"
mkdir -p "$dest" && rm -rf "$dest/include" && cp -r "$state/x/usr/include/onnxruntime" "$dest/include" || fail "headers not in the package"
rm -rf "$state"
echo "onnxruntime headers: $dest/include ($(basename "$deb"))"
