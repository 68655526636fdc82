"""The training step's thread governor (csrc/fastnn_governor.pxd; fastnn.set_dynamic).

The governor's decisions are driven here by made-up step times (a simulated machine), so every
test is deterministic and none of them times anything. The plan tests check that the compiled
step runs the count the governor gives, and the same bits whatever it gives."""
import io
import math

import numpy as np
import pytest

import fastnn
from fastnn._kernels import _config
from fastnn._kernels.network import ThreadGovernor

from conftest import run_child

OPENMP = _config.openmp_enabled()


def simulate(gov, limit, cost, seconds, start=0.0, trace=None):
    """Steps on `gov` for `seconds` of simulated time from `start`: cost(k, t) is the time of a
    step on k threads at time t. Returns (simulated time spent, {count: steps}). `trace`, a
    list, gets (t, count) for every step whose count differs from the step before."""
    t, end = start, start + seconds
    steps = {}
    last = None
    while t < end:
        k = gov.threads(limit)
        assert 1 <= k <= limit
        dt = cost(k, t)
        gov.record(k, dt)
        t += dt
        steps[k] = steps.get(k, 0) + 1
        if trace is not None and k != last:
            trace.append((t, k))
        last = k
    return t - start, steps


def fixed(times):
    return lambda k, t: times[k]


QUIET = {1: 30e-6, 2: 20e-6}    # a small network on this machine, quiet (bench/contention.py)
BUSY = {1: 30e-6, 2: 180e-6}    # with a CPU-bound process beside it


def test_one_thread_is_never_probed():
    gov = ThreadGovernor()
    spent, steps = simulate(gov, 1, lambda k, t: 1e-3 * (1 + math.sin(t)), 2.0)
    assert set(steps) == {1}
    assert gov.probes == 0 and gov.current == 1


def test_quiet_machine_keeps_every_thread_and_probes_cheaply():
    gov = ThreadGovernor()
    spent, steps = simulate(gov, 2, fixed(QUIET), 5.0)
    assert gov.current == 2
    ideal = sum(steps.values()) * QUIET[2]
    assert spent <= 1.01 * ideal        # the probes on one thread cost under 1%
    # and less once they are spaced out (backoff): under 0.5% over the next 5 s
    spent2, steps2 = simulate(gov, 2, fixed(QUIET), 5.0, start=5.0)
    assert gov.current == 2
    assert spent2 <= 1.005 * sum(steps2.values()) * QUIET[2]
    assert steps2.get(1, 0) > 0         # it still looks, now and then


def test_busy_machine_moves_to_one_thread_quickly():
    gov = ThreadGovernor()
    trace = []
    spent, steps = simulate(gov, 2, fixed(BUSY), 5.0, trace=trace)
    assert gov.current == 1
    first_move = next(t for t, k in trace if k == 1)
    assert first_move < 0.05            # seconds of steps before the first step on one thread
    ideal = sum(steps.values()) * BUSY[1]
    assert spent <= 1.03 * ideal        # learning and the probes back on two threads: < 3%


def test_governor_follows_the_machine_as_other_work_starts_and_stops():
    """Quiet for 2 s, busy for 2 s, quiet again: it moves to one thread within 0.1 s of the
    busy time starting (a window's mean drifted, so it probes at once), and back to two within
    3 s of it ending (the probes' spacing is bounded by the backoff's cap)."""
    gov = ThreadGovernor()
    cost = lambda k, t: (BUSY if 2.0 <= t < 4.0 else QUIET)[k]   # noqa: E731
    trace = []
    simulate(gov, 2, cost, 7.5, trace=trace)
    assert gov.current == 2
    down = [t for t, k in trace if k == 1 and t >= 2.0]
    assert down and down[0] < 2.1
    # on one thread when the busy time ended, and back on two within 3 s
    assert [k for t, k in trace if t < 4.0][-1] == 1
    back = [t for t, k in trace if k == 2 and t >= 4.0]
    assert back and back[0] < 7.0
    assert [k for t, k in trace][-1] == 2


def test_judges_by_the_mean_step_time_not_the_typical_one():
    """Beside a busy process, a step on two threads is quick most of the time and now and then
    waits milliseconds for a paused thread: 97% of steps at 20 us, 3% at 5 ms (a mean of
    169 us), against 30 us on one thread. A median would keep two threads."""
    rng = np.random.default_rng(7)
    gov = ThreadGovernor()

    def cost(k, t):
        if k == 1:
            return 30e-6
        return 5e-3 if rng.random() < 0.03 else 20e-6

    spent, steps = simulate(gov, 2, cost, 5.0)
    assert gov.current == 1
    assert steps[1] >= 0.95 * sum(steps.values())


def test_one_slow_window_neither_moves_it_nor_starts_probes():
    """A quiet machine with one 15 ms stall of a two-thread step every 0.3 s: each stall makes
    its window look 1.5x slower than the one before, but a drift must last two windows to start
    a probe, so the stalls start none (the probes are the scheduled ones of a machine without
    stalls), and it never moves to one thread."""
    def run(with_stalls):
        gov = ThreadGovernor()
        stalls = set()

        def cost(k, t):
            slot = int(t / 0.3)
            if with_stalls and k == 2 and slot not in stalls:
                stalls.add(slot)
                return 15e-3
            return QUIET[k]

        trace = []
        simulate(gov, 2, cost, 6.0, trace=trace)
        return gov, trace, len(stalls)

    gov, trace, n_stalls = run(True)
    plain, _, _ = run(False)
    assert n_stalls >= 19
    assert gov.current == 2
    assert gov.probes <= plain.probes + 1
    assert all(gov_k == 2 for gov_k in _currents(trace))


def _currents(trace):
    """The counts of the runs of steps in a trace that lasted longer than two windows (the
    count moved to, as opposed to a probe window and the window back)."""
    out = []
    for (t0, k), (t1, _) in zip(trace, trace[1:]):
        if t1 - t0 > 0.05:
            out.append(k)
    return out


def test_a_decisive_first_window_moves_at_once():
    """A probe window under half of the current count's mean moves without the second round:
    steps that each wait 12 ms on two threads are not timed again. Two windows of 4 steps on
    two threads (the first, then the reference), then one thread for more than a window."""
    gov = ThreadGovernor()
    runs = []
    for _ in range(2000):
        k = gov.threads(2)
        gov.record(k, {1: 30e-6, 2: 12e-3}[k])
        if runs and runs[-1][0] == k:
            runs[-1][1] += 1
        else:
            runs.append([k, 1])
    assert runs[0] == [2, 8]
    assert runs[1][0] == 1 and runs[1][1] > 0.01 / 30e-6 + 1
    assert gov.current == 1


def test_one_stalled_step_is_not_decisive():
    """The same first probe against a window that is slow by one 12 ms step only: judged
    without that step the probe is not decisive, so the second round runs (and it stays)."""
    gov = ThreadGovernor()
    gov.threads(2)
    for _ in range(2):      # the first window, then the one before the probe
        for i in range(500):
            gov.record(2, 12e-3 if i == 499 else 20e-6)
    assert gov.phase == "try" and gov.probe == 1
    for _ in range(400):
        gov.record(1, 30e-6)
    assert gov.phase == "back" and gov.current == 2     # won once, not decisively
    for _ in range(600):    # (10 ms; the rest are not counted: a window runs one count)
        gov.record(2, 20e-6)
    assert gov.phase == "again"
    for _ in range(400):
        gov.record(1, 30e-6)
    assert gov.phase == "idle" and gov.current == 2


@pytest.mark.parametrize("start_at", [16, 1])
def test_many_threads_walk_to_a_good_count(start_at):
    """16 threads allowed; a step costs 1 ms * (4 / k + k / 4), least on 4 threads (2 ms) and
    within 4% of that on 3 and 5. It walks down from 16 (or up from 1) and settles within 10%
    (the margin a move needs) of the best."""
    gov = ThreadGovernor()
    gov.threads(16)
    if start_at != 16:
        gov.set_current(start_at)
    cost = lambda k, t: 1e-3 * (4 / k + k / 4)   # noqa: E731
    trace = []
    simulate(gov, 16, cost, 30.0, trace=trace)
    assert cost(gov.current, 0) <= 1.1 * 2e-3
    assert gov.current in (3, 4, 5)


def test_three_threads_can_go_to_two():
    """Counts off the halving ladder are tried too: cur - 1 (the count that leaves out a busy
    core of a machine) and cur + 1."""
    gov = ThreadGovernor()
    simulate(gov, 3, fixed({1: 3e-3, 2: 1e-3, 3: 3e-3}), 5.0)
    assert gov.current == 2


def test_a_busy_machine_whose_one_thread_steps_also_vary():
    """Two busy processes: steps on one thread take 30 us but stall 4 ms 1% of the time
    (windows at one thread vary by 1.5x and more), and steps on two threads average 720 us.
    The drifting windows must not make it probe all the time: the probes cost under 5%
    (GOV_SHARE is 1/32) over 30 s."""
    rng = np.random.default_rng(11)

    def cost(k, t):
        if k == 1:
            return 4e-3 if rng.random() < 0.01 else 30e-6
        return 720e-6

    gov = ThreadGovernor()
    spent, steps = simulate(gov, 2, cost, 30.0)
    assert gov.current == 1
    one = steps[1] * (0.01 * 4e-3 + 0.99 * 30e-6)     # the expected time of those steps
    assert spent - one <= 0.05 * spent


def test_stalls_on_every_count_do_not_make_it_wander():
    """Steps of 20 us that stall 10 ms 0.2% of the time on either count (one thread 1.5x
    slower throughout): a 10 ms window holds about one stall, so windows at the same count
    disagree by 2x. The windows grow until they hold several stalls, and it stays on two
    threads: within 5% of a fixed two-thread run (12.6% with fixed 10 ms windows)."""
    rng = np.random.default_rng(0)

    def cost(k, t):
        c = 10e-3 if rng.random() < 0.002 else 20e-6
        return c * (1.5 if k == 1 else 1.0)

    gov = ThreadGovernor()
    spent, steps = simulate(gov, 2, cost, 60.0)
    n = sum(steps.values())
    assert spent <= 1.05 * n * (0.002 * 10e-3 + 0.998 * 20e-6)
    assert gov.current == 2 and gov.scale > 1


def test_windows_shrink_back_when_the_machine_is_steady():
    gov = ThreadGovernor()
    rng = np.random.default_rng(1)
    simulate(gov, 2, lambda k, t: 10e-3 if rng.random() < 0.002 else 20e-6, 10.0)
    assert gov.scale > 1
    simulate(gov, 2, fixed(QUIET), 10.0, start=10.0)
    assert gov.scale == 1


@pytest.mark.parametrize("limit", [4, 8])
def test_other_work_starting_is_met_with_one_thread_fewer(limit):
    """Perfect scaling, then a busy process: a step on all `limit` threads takes 3x longer
    (one of them is paused), fewer are unaffected. The drift starts a probe of one thread
    fewer, with the backoff reset, so it moves to limit - 1 within 100 steps of the change,
    wherever in its probe schedule the change falls (it took up to 2000 before)."""
    worst = 0
    for start in np.linspace(20.0, 40.0, 9):
        gov = ThreadGovernor()

        def cost(k, t):
            busy = t >= start and k == limit
            return 1e-3 * limit / k * (3.0 if busy else 1.0)

        t, n = 0.0, None
        steps_after = 0
        while t < start + 30.0:
            k = gov.threads(limit)
            dt = cost(k, t)
            gov.record(k, dt)
            t += dt
            if t >= start:
                steps_after += 1
                if gov.current == limit - 1 and gov.phase == "idle":
                    n = steps_after
                    break
        assert n is not None
        worst = max(worst, n)
    assert worst <= 100


def test_one_stalled_probe_step_does_not_stop_the_probing():
    """A probe window with one step stalled for a minute (a debugger, SIGSTOP): its cost is
    judged without that step, so the probes go on at their usual spacing, and it still finds
    the faster count within seconds when the machine changes."""
    gov = ThreadGovernor()
    gov.threads(2)
    stalled = []

    def cost(k, t):
        if k == 1 and not stalled:
            stalled.append(t)
            return 60.0
        return (BUSY if t > 70.0 else QUIET)[k]

    trace = []
    simulate(gov, 2, cost, 80.0, trace=trace)
    assert stalled and stalled[0] < 1.0
    assert gov.current == 1
    assert [t for t, k in trace if k == 1 and t > 70.0][0] < 73.0


def test_a_new_limit_starts_afresh():
    gov = ThreadGovernor()
    simulate(gov, 2, fixed(BUSY), 1.0)
    assert gov.current == 1 and gov.probes > 0
    assert gov.threads(4) == 4
    assert gov.current == 4 and gov.probes == 0 and gov.phase == "idle"


def test_reports_of_counts_it_did_not_give_are_ignored():
    gov = ThreadGovernor()
    assert gov.threads(2) == 2
    for _ in range(1000):
        gov.record(1, 1.0)      # not the count it gave
        gov.record(3, 1.0)
    assert gov.phase == "idle" and gov.probes == 0
    # and it goes on as a fresh one: the first window, then a probe after the second
    for _ in range(8):
        gov.record(2, 0.01)
    assert gov.phase == "try" and gov.probe == 1


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf"), 0.0, 1e300])
def test_odd_times_keep_it_in_range(bad):
    gov = ThreadGovernor()
    for i in range(200):
        k = gov.threads(8)
        assert 1 <= k <= 8
        gov.record(k, bad if i % 3 == 0 else 1e-3 * k)


def test_no_clock_no_decisions():
    """Zero times (a build without OpenMP has no clock; it has one thread anyway): no probe."""
    gov = ThreadGovernor()
    for _ in range(1000):
        gov.record(gov.threads(4), 0.0)
    assert gov.probes == 0 and gov.current == 4


@pytest.mark.parametrize("call", ["threads", "reset"])
def test_limits_below_one_are_refused(call):
    with pytest.raises(ValueError, match="limit"):
        getattr(ThreadGovernor(), call)(0)


def test_set_current_is_checked():
    gov = ThreadGovernor()
    gov.threads(2)
    with pytest.raises(ValueError, match="count"):
        gov.set_current(3)
    with pytest.raises(ValueError, match="count"):
        gov.set_current(0)


# ============================================================================ the public switch
def test_set_dynamic_roundtrip():
    before = fastnn.get_dynamic()
    assert fastnn.set_dynamic(False) is before
    assert fastnn.get_dynamic() is False
    assert fastnn.set_dynamic(np.bool_(True)) is False
    assert fastnn.get_dynamic() is True
    assert "set_dynamic" in fastnn.__all__ and "get_dynamic" in fastnn.__all__


@pytest.mark.parametrize("value,want", [(0, False), (1, True), (np.int64(1), True),
                                        (np.bool_(False), False)], ids=repr)
def test_set_dynamic_takes_0_and_1(value, want):
    fastnn.set_dynamic(not want)
    fastnn.set_dynamic(value)
    assert fastnn.get_dynamic() is want


@pytest.mark.parametrize("value", [2, -1, "yes", None, 1.0, np.float64(0.0)], ids=repr)
def test_set_dynamic_takes_a_bool_only(value):
    before = fastnn.get_dynamic()
    with pytest.raises(TypeError, match="enabled"):
        fastnn.set_dynamic(value)
    assert fastnn.get_dynamic() is before


@pytest.mark.parametrize("value,want", [("", True), ("1", True), (" on ", True), ("TRUE", True),
                                        ("0", False), ("off", False), ("no", False)])
def test_fastnn_dynamic_environment_variable(value, want):
    proc = run_child({"FASTNN_DYNAMIC": value}, "import fastnn; print(fastnn.get_dynamic())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == str(want)


@pytest.mark.parametrize("value", ["2", "maybe", "-1"])
def test_invalid_fastnn_dynamic_raises_at_import(value):
    proc = run_child({"FASTNN_DYNAMIC": value}, "import fastnn")
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "FASTNN_DYNAMIC" in proc.stderr


def test_show_config_reports_the_switch():
    for flag in (True, False):
        fastnn.set_dynamic(flag)
        buf = io.StringIO()
        info = fastnn.show_config(file=buf)
        assert info["dynamic"] is flag
        assert ("dynamic     on" if flag else "dynamic     off") in buf.getvalue()


# ============================================================================ the compiled step
def _net(dims, n, dtype=np.float32, seed=3):
    rng = np.random.default_rng(seed)
    layers = [fastnn.Dense(a, b, activation="relu" if i < len(dims) - 2 else None, dtype=dtype,
                           seed=seed + i) for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]
    model = fastnn.Sequential(*layers)
    opt = fastnn.SGD(model.parameters(), lr=0.05, momentum=0.9)
    X = rng.standard_normal((n, dims[0])).astype(dtype)
    y = rng.integers(0, dims[-1], n)
    return model, opt, X, y


def _plan(model):
    (entry,) = [e for e in model._compiled.values() if e[1] is not None]
    return entry[1].plan


@pytest.mark.skipif(not OPENMP, reason="one thread without OpenMP: nothing to choose")
@pytest.mark.parametrize("dims,n,chunked", [((64, 64, 64, 10), 128, True),
                                            ((300, 200, 10), 256, False)],
                         ids=["chunked", "layers"])
def test_the_step_runs_the_governors_count_and_the_same_bits(dims, n, chunked):
    """With dynamic on, the step runs the count its governor gives (here moved by hand between
    1, 2 and 3 threads); the model trains to the same bits as one fixed on 3 threads. On a
    step in row chunks and on one layer by layer (each checked: a batch too short to cut
    would run whole and leave the chunks' region untested)."""
    loss = fastnn.SoftmaxCrossEntropy()
    fastnn.set_dynamic(False)
    ref, ropt, X, y = _net(dims, n)
    with fastnn.threads(3):
        ref_losses = [ref.train_step(X, y, loss, ropt) for _ in range(12)]
        assert _plan(ref).step_threads == 3
        assert (_plan(ref).chunk_rows > 0) == chunked

    fastnn.set_dynamic(True)
    model, opt, X2, y2 = _net(dims, n)
    seen = []
    with fastnn.threads(3):
        losses = [model.train_step(X2, y2, loss, opt)]
        gov = _plan(model).governor
        for i in range(11):
            gov.set_current((1, 2, 3)[i % 3])
            losses.append(model.train_step(X2, y2, loss, opt))
            seen.append(_plan(model).step_threads)
    assert set(seen) == {1, 2, 3}
    assert all(1 <= k <= 3 for k in seen)
    assert losses == ref_losses
    for i, (a, b) in enumerate(zip(model.parameters(), ref.parameters())):
        assert a.data.tobytes() == b.data.tobytes(), i


@pytest.mark.skipif(not OPENMP, reason="one thread without OpenMP: nothing to choose")
def test_the_step_reports_its_times_to_the_governor():
    """With dynamic on, each step's time reaches the plan's governor: after two windows of
    steps (4 steps and 10 ms each) it starts its first probe. Off, the governor hears nothing."""
    import time

    model, opt, X, y = _net((64, 64, 10), 64)
    loss = fastnn.SoftmaxCrossEntropy()
    with fastnn.threads(2):
        fastnn.set_dynamic(False)
        model.train_step(X, y, loss, opt)
        gov = _plan(model).governor
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            model.train_step(X, y, loss, opt)
        assert gov.probes == 0 and gov.phase == "idle"
        fastnn.set_dynamic(True)
        end = time.perf_counter() + 10.0
        while gov.probes == 0 and time.perf_counter() < end:
            model.train_step(X, y, loss, opt)
        assert gov.probes >= 1


@pytest.mark.skipif(not OPENMP, reason="one thread without OpenMP: nothing to choose")
def test_with_dynamic_off_the_step_runs_every_thread():
    model, opt, X, y = _net((64, 64, 10), 64)
    loss = fastnn.SoftmaxCrossEntropy()
    fastnn.set_dynamic(True)
    with fastnn.threads(2):
        model.train_step(X, y, loss, opt)
        _plan(model).governor.set_current(1)
        model.train_step(X, y, loss, opt)
        assert _plan(model).step_threads == 1
        fastnn.set_dynamic(False)
        model.train_step(X, y, loss, opt)
        assert _plan(model).step_threads == 2
    with fastnn.threads(3):
        model.train_step(X, y, loss, opt)
        assert _plan(model).step_threads == 3


def test_bench_runs_on_fixed_threads_and_restores_the_switch():
    from fastnn import bench

    fastnn.set_dynamic(True)
    out = io.StringIO()
    bench.run(networks=[((3, 5, 2), 7)], rounds=1, min_time=0.001, use_torch=False, stream=out)
    assert "threads, fixed" in out.getvalue()
    assert fastnn.get_dynamic() is True
