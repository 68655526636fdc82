"""python -m fastnn demo (fastnn/demo.py), the README's main job: it runs, and its options are
checked before anything trains."""
import io
import os
import sys
import types

import pytest

from fastnn import demo


def test_demo_main_prints_to_the_stdout_of_the_moment(capsys):
    """main() writes to sys.stdout as it is when called (so that the checks below, that
    nothing trained, can see a run's output at all)."""
    assert demo.main(["--steps", "5", "--no-plots"]) == 0
    assert "train accuracy" in capsys.readouterr().out


def test_demo_runs_and_reports_the_course_experiments():
    out = io.StringIO()
    results = demo.run(steps=40, seed=3, plots=False, stream=out)
    text = out.getvalue()
    assert "seed 3" in text and "Universal approximation" in text and "plain NumPy reference" in text
    assert results and all(0.0 <= acc <= 1.0 for pair in results.values() for acc in pair)


@pytest.mark.parametrize("args,words", [
    (["--seed", "-1"], "--seed"),
    (["--steps", "0"], "--steps"),
    (["--out", "{file}"], "is a file"),
])
def test_demo_options_are_refused_before_training(args, words, tmp_path, capsys):
    """A negative seed or an --out that is a file: a usage error at once (they ended in a
    traceback, --out only after every network had trained)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit) as info:
        demo.main([a.format(file=afile) for a in args])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert words in captured.err
    assert "accuracy" not in captured.out


def test_demo_without_matplotlib_names_an_install_that_gets_it(monkeypatch):
    """Without matplotlib the demo says how to get the figures and trains all the same. The
    hint names matplotlib itself: ``pip install "fastnn[plot]"`` (what it said before) fetches
    an unrelated project of that name from PyPI (README, *Installing*)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib: ImportError
    out = io.StringIO()
    results = demo.run(steps=5, stream=out)
    text = out.getvalue()
    assert "matplotlib is not installed" in text and "pip install matplotlib" in text
    assert "fastnn[plot]" not in text
    assert results


def test_demo_figures_folder_is_made_before_training(tmp_path, monkeypatch, capsys):
    """With figures on, a folder that cannot be made (under a file) is reported before any
    network trains, as a usage error naming --out (matplotlib stubbed: the folder is made
    before it draws anything)."""
    mpl = types.ModuleType("matplotlib")
    mpl.use = lambda backend: None
    pyplot = types.ModuleType("matplotlib.pyplot")
    mpl.pyplot = pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", mpl)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        demo.run(out_dir=str(afile / "sub"), steps=5, stream=io.StringIO())
    with pytest.raises(SystemExit) as info:
        demo.main(["--out", str(afile / "sub"), "--steps", "5"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and "accuracy" not in captured.out


def test_a_figure_that_fails_while_written_leaves_the_old_one(tmp_path):
    """savefig writes in place: a full disk or an interrupt while a figure was written left a
    truncated PNG where the last run's was. Figures go through a temporary file now; a failure
    leaves the old figure, no temporary file, an error naming the figure, and the figure
    closed."""
    import errno

    closed = []
    plt = types.SimpleNamespace(close=closed.append)

    class Fig:
        def __init__(self, fail):
            self.fail = fail

        def savefig(self, f, format=None, dpi=None):
            assert format == "png"
            f.write(b"\x89PNG partial")
            if self.fail:
                raise self.fail

    path = tmp_path / "capacity.png"
    path.write_bytes(b"old figure")
    for fail in (OSError(errno.EFBIG, "File too large"), KeyboardInterrupt()):
        fig = Fig(fail)
        with pytest.raises(type(fail)) as info:
            demo._save_figure(plt, fig, str(path))
        if isinstance(fail, OSError):
            assert info.value.filename == str(path) and info.value.errno == errno.EFBIG
        assert path.read_bytes() == b"old figure"
        assert os.listdir(tmp_path) == ["capacity.png"]
        assert closed[-1] is fig
    fig = Fig(None)
    demo._save_figure(plt, fig, str(path))
    assert path.read_bytes() == b"\x89PNG partial" and closed[-1] is fig


def test_demo_run_checks_its_seed():
    with pytest.raises(ValueError, match="seed"):
        demo.run(steps=5, seed=-1, plots=False, stream=io.StringIO())
