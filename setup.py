"""Build script for fastnn's compiled kernels.

All compiled code lives in ``csrc/``; each ``csrc/<concern>.pyx`` becomes the private
extension module ``fastnn._kernels.<concern>``.

Environment switches
--------------------
FASTNN_OPENMP=0      build serial kernels (no OpenMP), whatever the compiler can do.
FASTNN_OPENMP=1      OpenMP is required: a compiler without it is an error.
(unset)              probe the compiler; without OpenMP, warn and build serial kernels.
FASTNN_DEBUG=1       Cython bounds checks and wraparound on, -O0 -g: for debugging and sanitizers.
FASTNN_SANITIZE=...  extra -fsanitize=... value ("address", "undefined": then also -fno-wrapv),
                     implies FASTNN_DEBUG.
FASTNN_NATIVE=1      add -march=native (never the default: a wheel must run on any x86-64).
FASTNN_BUILD_JOBS=N  compile N modules at once (default: one per CPU; build_ext -j N also sets it),
                     and translate them with Cython in N processes where Python forks them.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")

# The compiled concerns: csrc/<name>.pyx -> fastnn._kernels.<name>
KERNEL_MODULES = ["_config", "activations", "dense", "losses", "dropout", "optim", "network",
                  "stepcall"]

_PROBE_SOURCE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """
)


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    value = value.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 0 or 1, got {os.environ[name]!r}")


def _openmp_flags(compiler):
    """Compile and link flags for OpenMP with this compiler."""
    ctype = compiler.compiler_type
    if ctype == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp driver flag; libomp (Homebrew) provides the runtime.
        cflags = ["-Xpreprocessor", "-fopenmp"]
        lflags = ["-lomp"]
        for prefix in (os.environ.get("OPENMP_PREFIX"), "/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"):
            if prefix and os.path.isdir(prefix):
                cflags += [f"-I{prefix}/include"]
                lflags += [f"-L{prefix}/lib", f"-Wl,-rpath,{prefix}/lib"]
                break
        return cflags, lflags
    return ["-fopenmp"], ["-fopenmp"]


def _probe_openmp(compiler, cflags, lflags):
    """Can this compiler compile, link and run an OpenMP program?"""
    tmp = tempfile.mkdtemp(prefix="fastnn-omp-")
    old = os.getcwd()
    try:
        os.chdir(tmp)
        with open("probe.c", "w") as f:
            f.write(_PROBE_SOURCE)
        objs = compiler.compile(["probe.c"], output_dir="objs", extra_postargs=cflags)
        exe = os.path.join(tmp, "probe" + (".exe" if sys.platform == "win32" else ""))
        compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=lflags)
        out = subprocess.check_output([exe], timeout=60).decode().strip()
        return out == "1"
    except Exception as exc:  # noqa: BLE001 - any failure means "no OpenMP"
        print(f"fastnn: OpenMP probe failed: {exc}")
        return False
    finally:
        os.chdir(old)
        shutil.rmtree(tmp, ignore_errors=True)


def _base_cflags(compiler, debug, sanitize):
    if compiler.compiler_type == "msvc":
        return (["/Od", "/Zi"] if debug else ["/O2"]), []
    cflags = ["-O0", "-g"] if debug else ["-O3"]
    if not debug and "-g" not in os.environ.get("CFLAGS", "").split():
        # Python's own CFLAGS carry -g: debug info would be ~80% of each module (and of the
        # wheel). Symbols stay for profilers; CFLAGS=-g keeps debug info in an optimized build.
        cflags.append("-g0")
    # Keeps IEEE semantics (NaN/Inf propagate); only drops errno and trap side effects,
    # which lets loops with conditionals and sqrt vectorize. Never -ffast-math.
    cflags += ["-fno-math-errno", "-fno-trapping-math", "-Wno-unused-function", "-Wno-unreachable-code"]
    lflags = []
    if _env_flag("FASTNN_NATIVE"):
        cflags.append("-march=native")
    if sanitize:
        cflags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
        lflags += [f"-fsanitize={sanitize}"]
        if {"undefined", "signed-integer-overflow"} & set(sanitize.split(",")):
            # Python's CFLAGS carry -fwrapv, which defines signed overflow (it wraps) and so
            # hides it from UBSan: an index or size computation that overflows must be reported
            cflags.append("-fno-wrapv")
    return cflags, lflags


class FastnnBuildExt(build_ext):
    """build_ext that decides OpenMP and compiler flags once, for every kernel module."""

    def finalize_options(self):
        super().finalize_options()
        # The seven modules compile on every CPU unless told otherwise (build_ext -j N, or
        # FASTNN_BUILD_JOBS=N): `pip install .` on a 2-core machine spent ~2.5 min in a serial
        # compile, network.pyx's the longest
        if not self.parallel:
            self.parallel = _build_jobs()

    def build_extensions(self):
        sanitize = os.environ.get("FASTNN_SANITIZE", "").strip()
        debug = bool(_env_flag("FASTNN_DEBUG")) or bool(sanitize)
        want = _env_flag("FASTNN_OPENMP")
        cflags, lflags = _base_cflags(self.compiler, debug, sanitize)

        use_openmp = False
        if want is not False:
            ocflags, olflags = _openmp_flags(self.compiler)
            use_openmp = _probe_openmp(self.compiler, ocflags, olflags)
            if use_openmp:
                cflags += ocflags
                lflags += olflags
            elif want:
                raise RuntimeError(
                    "FASTNN_OPENMP=1 but the compiler cannot build an OpenMP program. "
                    "Install an OpenMP-capable compiler (GCC, or clang with libomp) or set FASTNN_OPENMP=0."
                )
            else:
                warnings.warn(
                    "fastnn: the compiler has no working OpenMP; building SERIAL kernels. "
                    "Set FASTNN_OPENMP=0 to silence this, or install an OpenMP-capable compiler.",
                    stacklevel=1,
                )
        print(f"fastnn: building with OpenMP {'on' if use_openmp else 'off'}"
              f"{' (debug)' if debug else ''}{' sanitize=' + sanitize if sanitize else ''}")
        for ext in self.extensions:
            ext.extra_compile_args = list(cflags) + list(ext.extra_compile_args or [])
            ext.extra_link_args = list(lflags) + list(ext.extra_link_args or [])
            ext.define_macros = list(ext.define_macros or []) + [
                ("FASTNN_BUILT_WITH_OPENMP", "1" if use_openmp else "0"),
            ]
        # setuptools skips a module whose .so is newer than its sources, so switching
        # FASTNN_OPENMP/FASTNN_DEBUG/... in a tree built before would reuse the old build:
        # rebuild everything when the flags differ from the last build's.
        stamp = os.path.join(self.build_temp, "fastnn-build-flags.txt")
        flags = repr((sorted(set(cflags)), sorted(set(lflags)), use_openmp, debug))
        try:
            with open(stamp) as f:
                same = f.read() == flags
        except OSError:
            same = False
        if not same:
            self.force = True
            self.compiler.force = True
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(flags)


def _build_jobs():
    """FASTNN_BUILD_JOBS, else one per CPU."""
    jobs = os.environ.get("FASTNN_BUILD_JOBS", "").strip()
    return int(jobs) if jobs.isdigit() and int(jobs) > 0 else (os.cpu_count() or 1)


def _cython_jobs():
    """Processes for Cython's translation of the modules (0: this process). Cython runs them
    in a multiprocessing pool, which is safe here only where its workers are forked: a
    spawned or forkserver worker imports this script again, which calls setup() at import.
    So: where fork is this Python's default start method (Linux before 3.14) and nothing
    chose another. The seven modules took 27 s one after the other on a 2-core machine
    (network.pyx 7 s)."""
    import multiprocessing

    if multiprocessing.get_all_start_methods()[0] != "fork":
        return 0
    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork"):
        return 0
    jobs = min(_build_jobs(), len(KERNEL_MODULES))
    return jobs if jobs > 1 else 0


def _extensions():
    from Cython.Build import cythonize

    sanitize = os.environ.get("FASTNN_SANITIZE", "").strip()
    debug = bool(_env_flag("FASTNN_DEBUG")) or bool(sanitize)
    # Cython directives, in one place for every kernel module.
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "nonecheck": False,
        "embedsignature": True,
        "cpow": True,
    }
    exts = [
        Extension(
            f"fastnn._kernels.{name}",
            sources=[os.path.join(CSRC, f"{name}.pyx")],
            include_dirs=[CSRC],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for name in KERNEL_MODULES
    ]
    # cythonize regenerates a module's C only when its sources are newer than it: after a
    # switch of FASTNN_DEBUG (bounds checks) the old C would be compiled again. Regenerate all
    # when the directives differ from those of the C in build/cython.
    build_dir = os.path.join("build", "cython")
    stamp = os.path.join(build_dir, "fastnn-cython-directives.txt")
    wanted = repr(sorted(directives.items()))
    try:
        with open(stamp) as f:
            force = f.read() != wanted
    except OSError:
        force = True
    modules = cythonize(
        exts,
        include_path=[CSRC],
        compiler_directives=directives,
        # OpenMP is decided per build, so the generated C must not depend on it:
        # Cython emits #ifdef _OPENMP guards around every pragma.
        compile_time_env={"FASTNN_DEBUG": debug},
        build_dir=build_dir,
        force=force,
        quiet=True,
        nthreads=_cython_jobs(),
    )
    os.makedirs(build_dir, exist_ok=True)
    with open(stamp, "w") as f:
        f.write(wanted)
    return modules


setup(ext_modules=_extensions(), cmdclass={"build_ext": FastnnBuildExt})
