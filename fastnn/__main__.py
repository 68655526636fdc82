"""Command line: ``python -m fastnn demo`` (the main job), ``python -m fastnn bench``,
``python -m fastnn config``."""
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
    if cmd == "demo":
        from fastnn.demo import main as demo_main
        return demo_main(rest)
    if cmd == "bench":
        from fastnn.bench import main as bench_main
        return bench_main(rest)
    if cmd == "config":
        import fastnn
        fastnn.show_config()
        return 0
    print(f"unknown command {cmd!r}\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
