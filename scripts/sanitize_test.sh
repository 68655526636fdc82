#!/usr/bin/env bash
# Sanitizer check: build the compiled kernels with a sanitizer (and Cython's bounds checks:
# FASTNN_SANITIZE implies FASTNN_DEBUG=1) in a separate copy of the working tree, then run the
# test suite against that build. Any report aborts the interpreter, so a green run means zero
# errors of that sanitizer.
#
#   FASTNN_SANITIZE=address   (the default) AddressSanitizer: heap/stack/global buffer
#                             overflows, use after free, ...
#   FASTNN_SANITIZE=undefined UndefinedBehaviorSanitizer: signed overflow in index and size
#                             arithmetic (setup.py drops Python's -fwrapv for it), shifts out
#                             of range, misaligned or null pointers, ... (with gcc, which links
#                             its runtime into each module; clang would need -shared-libsan)
# One sanitizer a run: the two need different runtimes set up.
#
#   scripts/sanitize_test.sh                          # ASan, the default test run (tests/)
#   scripts/sanitize_test.sh tests/test_dense.py      # a subset; any pytest arguments
#   FASTNN_SANITIZE=undefined scripts/sanitize_test.sh --run-slow
#
# The copy lives in $FASTNN_SANITIZE_DIR (default: build/asan or build/ubsan in this checkout,
# beside its other build outputs); this repository's own in-place extension modules are never
# touched. ASan's leak detection is off: CPython itself does not free everything at exit.
set -euo pipefail
dest_arg=${FASTNN_SANITIZE_DIR:+$(realpath -m "$FASTNN_SANITIZE_DIR")}   # (before the cd)
cd "$(dirname "$0")/.."
root=$(pwd)
sanitize=${FASTNN_SANITIZE:-address}
case "$sanitize" in
    address) short=asan ;;
    undefined) short=ubsan ;;
    *) echo "FASTNN_SANITIZE must be address or undefined, got '$sanitize'" >&2; exit 2 ;;
esac
dest=${dest_arg:-$root/build/$short}
python=${PYTHON:-python3}

# 1. a copy of the working tree (tracked and untracked files, not ignored build outputs; a
# tracked file deleted from the working tree is left out), in place of the last copy's files:
# only its build/ stays (Cython's and the compiler's outputs, which it rebuilds as needed).
# Only the default folder, one this script made (its marker file inside) or an empty one is
# cleared.
marker=.fastnn-sanitize-copy
mkdir -p "$dest"
if [ -z "$dest_arg" ]; then
    touch "$dest/$marker"
elif [ ! -e "$dest/$marker" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "$dest is not empty and not a copy made by this script: choose another FASTNN_SANITIZE_DIR" >&2
    exit 2
fi
find "$dest" -mindepth 1 -maxdepth 1 ! -name build ! -name "$marker" -exec rm -rf {} +
touch "$dest/$marker"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf - | (cd "$dest" && tar -xf -)

# 2. the sanitized build (separate build directory: build/ inside the copy)
(cd "$dest" && FASTNN_SANITIZE=$sanitize "$python" setup.py build_ext -i > "$dest/$short-build.log" 2>&1) \
    || { tail -40 "$dest/$short-build.log"; exit 1; }
grep -q "sanitize=$sanitize" "$dest/$short-build.log" || { echo "the build did not enable $sanitize"; exit 1; }

# 3. the tests against it
if [ "$sanitize" = address ]; then
    # the ASan runtime preloaded (the python binary is not sanitized)
    libasan=$(${CC:-gcc} -print-file-name=libasan.so)
    [ -e "$libasan" ] || { echo "libasan not found (install the compiler's libasan)"; exit 1; }
    # libstdc++ too: ASan intercepts __cxa_throw and must find the real one when it starts, or
    # the first C++ exception in an extension that links libstdc++ later (matplotlib's ft2font,
    # which the demo tests import, throws one on import) stops the run with a "CHECK failed" abort
    libstdcxx=$(${CXX:-g++} -print-file-name=libstdc++.so 2>/dev/null || ${CC:-gcc} -print-file-name=libstdc++.so)
    if [ -e "$libstdcxx" ]; then
        export LD_PRELOAD="$libasan $libstdcxx"
    else
        echo "note: libstdc++ not found; preloading libasan alone (C++ extensions may abort)" >&2
        export LD_PRELOAD="$libasan"
    fi
    # allocator_may_return_null: a huge allocation (a crafted .npy header claiming 2**45
    # elements) is a MemoryError in Python, as without ASan, rather than an ASan abort
    export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1:${ASAN_OPTIONS:-}"
else
    # the modules link the UBSan runtime themselves; without halt_on_error a report would
    # only be printed and the run would go on
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
fi
cd "$dest"
export PYTHONPATH="$dest${PYTHONPATH:+:$PYTHONPATH}"   # (first: the sanitized build)
"$python" - "$dest" "$sanitize" <<'EOF'
import os, sys
import fastnn._kernels.dense as d
dest, sanitize = os.path.realpath(sys.argv[1]), sys.argv[2]
where = os.path.realpath(d.__file__)
assert where.startswith(dest + os.sep), f"imported {where}, not the {sanitize} build in {dest}"
print(f"{sanitize} build: {where}")
EOF
"$python" -m pytest -q -p no:cacheprovider "${@:-tests}"
