#!/usr/bin/env bash
# Memory safety check: build the compiled kernels with AddressSanitizer (and Cython's bounds
# checks: FASTNN_SANITIZE=address implies FASTNN_DEBUG=1) in a separate copy of the working tree,
# then run the test suite against that build. Any ASan report (heap/stack/global buffer overflow,
# use after free, ...) aborts the interpreter, so a green run means zero ASan errors.
#
#   scripts/asan_test.sh                      # the default test run (tests/)
#   scripts/asan_test.sh tests/test_dense.py  # a subset; any pytest arguments
#   FASTNN_ASAN_DIR=/tmp/fastnn-asan scripts/asan_test.sh --run-slow
#
# The copy lives in $FASTNN_ASAN_DIR (default: a build/asan directory next to this repo's build
# outputs); this repository's own in-place extension modules are never touched. Leak detection
# is off: CPython itself does not free everything at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dest=${FASTNN_ASAN_DIR:-$root/build/asan}
python=${PYTHON:-python3}

# 1. a copy of the working tree (tracked and untracked files, not ignored build outputs)
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard \
    | (cd "$root" && tar --null -T - -cf -) | (cd "$dest" && tar -xf -)
# files deleted from the working tree since the last copy must not linger there
rm -f "$dest"/fastnn/_kernels/*.so

# 2. the sanitized build (separate build directory: build/ inside the copy)
(cd "$dest" && FASTNN_SANITIZE=address "$python" setup.py build_ext -i > "$dest/asan-build.log" 2>&1) \
    || { tail -40 "$dest/asan-build.log"; exit 1; }
grep -q "sanitize=address" "$dest/asan-build.log" || { echo "the build did not enable ASan"; exit 1; }

# 3. the tests against it, with the ASan runtime preloaded (the python binary is not sanitized)
libasan=$(${CC:-gcc} -print-file-name=libasan.so)
[ -e "$libasan" ] || { echo "libasan not found (install the compiler's libasan)"; exit 1; }
# libstdc++ too: ASan intercepts __cxa_throw and must find the real one when it starts, or the
# first C++ exception in an extension that links libstdc++ later (matplotlib's ft2font, which
# the demo tests import, throws one on import) stops the run with a "CHECK failed" abort
libstdcxx=$(${CXX:-g++} -print-file-name=libstdc++.so 2>/dev/null || ${CC:-gcc} -print-file-name=libstdc++.so)
if [ -e "$libstdcxx" ]; then
    export LD_PRELOAD="$libasan $libstdcxx"
else
    echo "note: libstdc++ not found; preloading libasan alone (C++ extensions may abort)" >&2
    export LD_PRELOAD="$libasan"
fi
# allocator_may_return_null: a huge allocation (a crafted .npy header claiming 2**45 elements) is
# a MemoryError in Python, as without ASan, rather than an ASan abort
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1:${ASAN_OPTIONS:-}"
cd "$dest"
PYTHONPATH="$dest" "$python" -c "import fastnn, fastnn._kernels.dense as d; print('ASan build:', d.__file__)"
PYTHONPATH="$dest" "$python" -m pytest -q -p no:cacheprovider "${@:-tests}"
