"""Command line: ``python -m fastnn demo`` (the main job), ``python -m fastnn bench``,
``python -m fastnn config``."""
import os
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m fastnn {demo,bench,config} [options]\n"
             "  demo    train the course's demo networks, print accuracies, save figures\n"
             "  bench   side-by-side training-step benchmark (fastnn, NumPy, PyTorch if installed)\n"
             "  config  print the build and runtime configuration")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in ("demo", "bench", "config"):
        print(f"unknown command {cmd!r}\n{usage}", file=sys.stderr)
        return 2
    if cmd == "config" and rest:
        if rest[0] in ("-h", "--help"):
            print("usage: python -m fastnn config\n  print the build and runtime configuration")
            return 0
        print(f"usage: python -m fastnn config\nconfig takes no arguments, got {rest}",
              file=sys.stderr)
        return 2
    try:
        code = _run(cmd, rest)
        if sys.stdout is not None:   # (None: stdout closed, pythonw)
            sys.stdout.flush()   # (a write error shows here, not at exit as an ignored exception)
        return code
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, as command-line tools do; the output
        # still buffered goes nowhere (a flush at exit would fail again)
        _silence_stdout()
        return 1
    except OSError as exc:   # a full disk, a folder that cannot be written: no traceback
        print(f"python -m fastnn {cmd}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # Ctrl-C: one line and the shell's 128 + SIGINT, no traceback
        # (files being written are left as they were: atomic_write removes its temporary)
        print(f"python -m fastnn {cmd}: interrupted", file=sys.stderr)
        return 130


def _silence_stdout():
    """Point the process's standard output at the null device (when it is a real file
    descriptor: not when main() runs inside a program that captured stdout)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # (io.UnsupportedOperation is both)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _run(cmd, rest):
    if cmd == "demo":
        from fastnn.demo import main as demo_main
        return demo_main(rest)
    if cmd == "bench":
        from fastnn.bench import main as bench_main
        return bench_main(rest)
    import fastnn
    fastnn.show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
