#!/usr/bin/env bash
# Build the native kernels (custom_ops/*.cc) with AddressSanitizer + UndefinedBehaviorSanitizer into a
# separate library, and print how to run the op tests and the fuzzer with it.
#
#   tools/sanitize_build.sh [OUT.so]          # default: build/sanitize/_qexport_ops_asan.so
#   tools/sanitize_build.sh --run [CASES]     # build, then run tests/test_native*.py, test_concurrency.py
#                                             # and tools/fuzz.py (CASES, default 2000) under it
#
# The library is loaded into a Python that was not built with ASan, so the ASan runtime must come first
# (LD_PRELOAD) and libstdc++ with it (otherwise the C++ exceptions the kernels throw for a malformed
# node abort the process).  QEXPORT_NATIVE_LIB makes qexport register this library instead of the
# installed one.  Every report is fatal (halt_on_error, -fno-sanitize-recover): the fuzzer counts it as a
# crash and saves the case.  Leak checking is off (CPython and onnxruntime keep memory until exit); an
# allocation over 4 GiB fails (returns null: onnxruntime reports it) rather than exhausting the machine,
# as the fuzzer's RLIMIT_AS does without ASan.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CXX="${CXX:-g++}"
INCLUDE="${QEXPORT_ORT_INCLUDE:-$ROOT/.cache/onnxruntime/include}"
RUN=0
if [[ "${1:-}" == "--run" ]]; then RUN=1; CASES="${2:-2000}"; OUT="$ROOT/build/sanitize/_qexport_ops_asan.so";
else OUT="${1:-$ROOT/build/sanitize/_qexport_ops_asan.so}"; fi
if [[ ! -f "$INCLUDE/onnxruntime_c_api.h" ]]; then
  echo "sanitize_build.sh: onnxruntime headers not found in $INCLUDE (run tools/fetch_ort_headers.sh or set QEXPORT_ORT_INCLUDE)" >&2
  exit 2
fi
mkdir -p "$(dirname "$OUT")"
# the same flags as setup.py, plus the sanitizers; -O1 keeps stacks readable and the run fast enough
"$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -ffp-contract=off -fno-math-errno -fvisibility=hidden \
  -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all \
  -fPIC -shared -I"$INCLUDE" -I"$ROOT/custom_ops" "$ROOT"/custom_ops/*.cc -o "$OUT"
PRELOAD="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
ENV=(LD_PRELOAD="$PRELOAD" QEXPORT_NATIVE_LIB="$OUT"
     ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:alloc_dealloc_mismatch=0:allocator_may_return_null=1:max_allocation_size_mb=4096"
     UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
echo "built $OUT"
echo "run under it with:"
echo "  env ${ENV[*]@Q} python -m pytest -q tests/test_native.py tests/test_native_hostile.py tests/test_concurrency.py"
echo "  env ${ENV[*]@Q} python tools/fuzz.py --cases 2000 --seed 0 --zoo"
if [[ $RUN == 1 ]]; then
  cd "$ROOT"
  env "${ENV[@]}" python -m pytest -q -p no:cacheprovider tests/test_native.py tests/test_native_hostile.py tests/test_concurrency.py
  env "${ENV[@]}" python tools/fuzz.py --cases "$CASES" --seed 0 --zoo --out "$ROOT/.cache/fuzz/failures-asan"
fi
