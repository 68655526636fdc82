# The thread governor: the training step's (network.pyx's StepPlan keeps one per plan), and
# the kernel calls' (one per kind and shape of call: the call governor, at the end).
#
# Why: on a machine whose cores are shared with other busy processes, a parallel region waits
# at its end for a thread the scheduler has paused. On this 2-core machine, with one CPU-bound
# process beside it, a small network's step on two threads averaged 2.7-5.3x its time on one
# (bench/contention.py; single steps took 8-16 ms instead of 20 us), and a large network's
# 1.6-2x. The governor finds that out by
# measuring, and runs the step on fewer threads while fewer are faster. Results never depend
# on the thread count (DESIGN.md), so its choice changes the speed only, never a bit of the
# numbers.
#
# How: a step asks gov_threads for its count and reports its time to gov_record. Times are
# summed over windows of at least GOV_WINDOW steps and GOV_WINDOW_SECONDS (up to
# GOV_SCALE_MAX times longer while two windows in a row at the same count disagree by 1.25x:
# a machine that stalls every step now and then needs windows that hold several stalls),
# and windows are compared by their mean step time. (Not a median, and not a window of a few steps: beside a
# busy process, a small network's step on two threads is as fast as on a free machine most of
# the time and takes milliseconds now and then, when the scheduler pauses one of its threads.
# Those rare slow steps are most of the time spent; a window must span several scheduler time
# slices to see them.)
#
# Between windows at the current count `cur`, the governor now and then tries another count
# (a probe: cur - 1, cur + 1, half or twice cur, in turn) for a window, then cur for one, then
# the probe again. It moves when both probe windows beat the cur window before each by
# GOV_MARGIN (10%; so it can stay on a count up to ~10% slower than the best): a single window that happened to be quick or slow does not move it. (A first
# probe window under GOV_DECISIVE of cur's mean without its slowest step moves at once: steps
# on two threads that each wait milliseconds for a paused thread cost too much to be timed
# again, and one stalled step cannot make a window decisive.) After a move it soon tries the
# same way again, so a long way (16 threads down to 2) is walked in a few moves.
#
# Probes are spaced so that the losing ones cost at most GOV_SHARE / backoff of the step time:
# after a probe window that lost `lost` seconds against cur (its slowest step left out), the
# next waits until the steps at cur have taken lost / GOV_SHARE * backoff seconds. (The first
# probe comes after the second window, whatever it costs.) backoff doubles after every losing
# probe, up to GOV_BACKOFF_MAX; a move keeps it (a move does not bring the frequent probing of
# a fresh plan back). The cap bounds how long a change of the machine that does not show in
# cur's own times can go unseen: about GOV_BACKOFF_MAX / GOV_SHARE = 256 times what one
# losing probe costs. Two windows in a row at cur whose mean moved by GOV_DRIFT from the one
# of the last decision (another process started or stopped) start a probe at once, in the
# direction the drift suggests (and after a move the same way is tried again soon, so the
# walk goes on); but not before lost / GOV_SHARE seconds (no backoff) have passed since the
# last losing probe: on a machine so busy that even cur's windows vary by 1.5x, drift alone
# keeps probes under GOV_SHARE.
#
# Every function is arithmetic on the struct, so the tests drive it with made-up times
# (network.ThreadGovernor).

from libc.float cimport DBL_MAX

from fastnn_openmp cimport fnn_parallel_count, fnn_wtime

cdef enum:
    GOV_WINDOW = 4       # steps in a window, at least
    GOV_SCALE_MAX = 16   # windows grow to 16 x GOV_WINDOW_SECONDS while cur's disagree

cdef enum:
    GOV_IDLE = 0         # Governor.phase: running cur between probes,
    GOV_TRY = 1          # the first probe window,
    GOV_BACK = 2         # the window at cur after the first probe won,
    GOV_AGAIN = 3        # the second probe window

cdef extern from *:
    """
    #define FNN_GOV_WINDOW_SECONDS 0.01
    #define FNN_GOV_MARGIN 0.9
    #define FNN_GOV_DECISIVE 0.5
    #define FNN_GOV_DRIFT 1.5
    #define FNN_GOV_SHARE (1.0 / 32)
    #define FNN_GOV_BACKOFF_MAX 8.0
    #define FNN_GOV_MIN_EXTRA 0.1
    """
    const double GOV_WINDOW_SECONDS "FNN_GOV_WINDOW_SECONDS"   # a window spans 10 ms at least
    const double GOV_MARGIN "FNN_GOV_MARGIN"        # a probe wins below 0.9 of cur's mean,
    const double GOV_DECISIVE "FNN_GOV_DECISIVE"    # and at once below 0.5 of it
    const double GOV_DRIFT "FNN_GOV_DRIFT"          # cur's mean moving 1.5x either way: probe
    const double GOV_SHARE "FNN_GOV_SHARE"          # the share of step time losing probes may
                                                    # cost (at backoff 1)
    const double GOV_BACKOFF_MAX "FNN_GOV_BACKOFF_MAX"
    const double GOV_MIN_EXTRA "FNN_GOV_MIN_EXTRA"  # a losing probe counts as costing at least
                                                    # 0.1 of cur's time


cdef struct Governor:
    int limit           # the thread count the caller allows (0: not used yet)
    int cur             # the count in use between probes
    int probe           # the count being probed (phases TRY, BACK, AGAIN; else 0)
    int phase           # GOV_IDLE, GOV_TRY, GOV_BACK or GOV_AGAIN
    int turn            # which kind of neighbour to probe next (gov_neighbour)
    int drifted         # consecutive windows at cur out of GOV_DRIFT of `settled`
    int scale           # a window spans scale * GOV_WINDOW_SECONDS at least
    int n               # steps in the running window
    int probes          # probes started since the last reset (for tests and diagnostics)
    double total        # the running window's seconds
    double top          # its slowest step's
    double ref          # the mean of the last window at cur (0: none yet)
    double ref_rest     # that window's mean without its slowest step
    double settled      # cur's mean at the last decision (the drift reference; 0: none)
    double budget       # seconds of steps at cur before the next probe
    double floor        # seconds of steps at cur before a drift may start one
    double backoff


cdef inline void gov_reset(Governor *g, int limit) noexcept nogil:
    g.limit = limit
    g.cur = limit
    g.probe = 0
    g.phase = GOV_IDLE
    g.turn = 0
    g.drifted = 0
    g.scale = 1
    g.n = 0
    g.probes = 0
    g.total = 0.0
    g.top = 0.0
    g.ref = 0.0
    g.ref_rest = 0.0
    g.settled = 0.0
    g.budget = 0.0
    g.floor = 0.0
    g.backoff = 1.0


cdef inline void gov_set_current(Governor *g, int count) noexcept nogil:
    """Run `count` threads (1 to the limit, the caller checks) from now on, measured afresh as
    after a new limit (a first window, a probe after the second), keeping the probe count and
    the backoff (tests: ThreadGovernor.set_current, the sites' set_sites_current)."""
    cdef int probes = g.probes
    cdef double backoff = g.backoff
    gov_reset(g, g.limit)
    g.cur = count
    g.probes = probes
    g.backoff = backoff


cdef inline int gov_running(const Governor *g) noexcept nogil:
    """The count the running window is for."""
    return g.probe if g.phase == GOV_TRY or g.phase == GOV_AGAIN else g.cur


cdef inline int gov_threads(Governor *g, int limit) noexcept nogil:
    """The thread count for the next step, at most `limit` (a new limit starts afresh)."""
    if limit != g.limit:
        gov_reset(g, limit)
    return gov_running(g)


cdef inline int gov_neighbour(Governor *g) noexcept nogil:
    """The count to probe next: of cur - 1, cur + 1, cur // 2 and 2 cur (at most the limit),
    those in [1, limit] other than cur, in turn from the kind g.turn names (the kind that
    moved last is tried first again: a long way down or up goes on the same way); 0 when the
    limit is 1."""
    cdef int cand[4]
    cdef int i, k, j
    cand[0] = g.cur - 1
    cand[1] = g.cur + 1 if g.cur < g.limit else 0
    cand[2] = g.cur // 2
    cand[3] = g.limit if g.cur > g.limit // 2 else 2 * g.cur
    for i in range(4):
        j = (g.turn + i) % 4
        k = cand[j]
        if 1 <= k <= g.limit and k != g.cur:
            g.turn = j
            return k
    return 0


cdef inline void gov_record(Governor *g, int used, double seconds) noexcept nogil:
    """Report that a step run with `used` threads (gov_threads' answer) took `seconds`."""
    cdef double m, m_rest, extra, spent
    cdef int steps
    if g.limit <= 1 or used != gov_running(g):
        return      # nothing to choose, or a count this governor did not give
    if not (0.0 <= seconds <= DBL_MAX):
        seconds = 0.0   # (NaN, inf or a clock step backwards: count it as free)
    g.total += seconds
    if seconds > g.top:
        g.top = seconds
    g.n += 1
    if g.n < GOV_WINDOW or g.total < GOV_WINDOW_SECONDS * g.scale:
        return
    spent, steps = g.total, g.n
    m = spent / steps
    m_rest = (spent - g.top) / (steps - 1)     # (steps >= GOV_WINDOW >= 2)
    if g.phase == GOV_IDLE and g.ref > 0.0 and m > 0.0:
        # two windows in a row at cur: when they disagree by more than 1.25x, one window
        # holds too few of the machine's stalls to judge by; longer ones hold more
        if m > 1.25 * g.ref or g.ref > 1.25 * m:
            if g.scale < GOV_SCALE_MAX:
                g.scale *= 2
        elif g.scale > 1 and m < 1.1 * g.ref and g.ref < 1.1 * m:
            g.scale //= 2
    if g.phase == GOV_IDLE or g.phase == GOV_BACK:
        g.ref = m
        g.ref_rest = m_rest
    g.n = 0
    g.total = 0.0
    g.top = 0.0
    if g.phase == GOV_BACK:
        g.phase = GOV_AGAIN     # (cur again: the reference for the second probe window)
        return
    if g.phase != GOV_IDLE:
        if m < GOV_MARGIN * g.ref:
            if g.phase == GOV_TRY and m >= GOV_DECISIVE * g.ref_rest:
                g.phase = GOV_BACK      # won once: cur for a window, then the probe again
                return
            g.cur = g.probe             # won twice, or decisively: move, and soon try the
            g.ref = m                   # same way again (g.turn stays)
            g.settled = m
            g.drifted = 0
            g.budget = spent / GOV_SHARE * GOV_MIN_EXTRA
            g.floor = 0.0
        else:                           # lost: stay, wait longer, try another way next
            # (what the probe cost, without its slowest step: one step stalled for a minute
            # by a debugger or SIGSTOP must not put the next probe off for hours)
            extra = m_rest - g.ref      # (seconds lost per step)
            if extra < GOV_MIN_EXTRA * g.ref:
                extra = GOV_MIN_EXTRA * g.ref
            g.floor = steps * extra / GOV_SHARE
            g.budget = g.floor * g.backoff
            g.turn = (g.turn + 1) % 4
            g.backoff = g.backoff * 2.0
            if g.backoff > GOV_BACKOFF_MAX:
                g.backoff = GOV_BACKOFF_MAX
        g.probe = 0
        g.phase = GOV_IDLE
        return
    if g.settled == 0.0:
        g.settled = m       # the first window: probe after the next one
        g.budget = spent
        return
    if m > GOV_DRIFT * g.settled or m * GOV_DRIFT < g.settled:
        g.drifted += 1
    else:
        g.drifted = 0
    g.budget -= spent
    g.floor -= spent
    if g.drifted >= 2 and g.floor <= 0.0:
        # the machine changed under us: probe now, first with one thread fewer when cur got
        # slower (other work started), one more when it got faster. (backoff stays: setting it
        # back to 1 did not speed up the walks of the tests, and on a machine whose windows
        # drift all the time it would let the scheduled probes cost 1/32 again.)
        g.turn = 0 if m > g.settled else 1
        g.settled = m
        g.budget = 0.0
    if g.budget <= 0.0:
        g.probe = gov_neighbour(g)
        if g.probe > 0:
            g.phase = GOV_TRY
            g.probes += 1
            g.drifted = 0



cdef inline void gov_nudge(Governor *g, int turn) noexcept nogil:
    """Another governor of the same work moved from g's count (the call governor: one site of
    a module's table, fastnn_governor's gov_site_record): between probes, try the kind of count
    it moved to (`turn`, as in gov_neighbour) when the running window ends, without waiting
    for the probe budget or a drift. The probe must still win for g to move."""
    if g.phase != GOV_IDLE or g.settled == 0.0:
        return      # probing already, or before its first window (it probes soon anyway)
    g.turn = turn
    g.budget = 0.0
    g.floor = 0.0

# The call governor: the same governor, one per kind and shape of kernel call, for the calls
# fastnn.functional, the layers' forward/backward and the optimizers make one by one (each a
# parallel region of its own, so each waits for a paused thread as the step does: beside one
# busy process, the SGD updates of 784-512-512-10's three weights in a course-style step took
# 2.3-2.4 ms per step on two threads and 0.1 ms on one). Each kernel module keeps a table of
# GOV_SITES sites (a static array: zero, every slot empty, at load) keyed by a hash of the
# call's kind and shape (gov_key). A kernel's def function asks gov_begin for its thread count
# and calls gov_end when the kernel returned; both run with the GIL held, so the table needs no
# lock. (A call's time includes taking the GIL back after its kernel: with other Python
# threads running, their share of the GIL is charged to the count; not a concern for one.)
# A call given several threads that started no parallel region (too little work: it runs
# serial at any count) marks its site serial: its calls get the full count and are not timed
# (a serial call's time says nothing about threads). A serial site's call that does start one
# (the private tuning hooks, dense.set_tile_params or activations.set_min_work_per_thread,
# lowered a threshold) is timed again from the next call. Only the speed depends on the count,
# never the numbers (DESIGN.md).
#
# A site that moves nudges the other timed sites of its module that run the count it left:
# they try the way it went at the end of their running window, without waiting out the
# spacing of their probes (gov_nudge); each moves only if the try wins for it too.
#
# Limits: a site's windows are of its own calls' time, so a call that is a tenth of a training
# step needs ten times the step's time per window. After busy work started, 784-512-512-10
# (128)'s course-style step took about 3 s to reach its 1-thread speed without the nudge, and
# 1-2 s with it (bench/NOTES.md, "When the cores are busy"). Modules do not share what they learn.

cdef enum:
    GOV_SITES = 128      # sites per kernel module
    GOV_SITE_PROBE = 8   # slots searched from a key's home slot

cdef struct GovSite:
    unsigned long long key   # gov_key of the calls it governs (0: an empty slot)
    long long calls          # calls it has seen (tests, diagnostics)
    int serial               # its calls start no parallel region: not timed
    int last                 # the thread count the last call was given
    Governor g

cdef struct GovCall:
    GovSite *sites           # the module's table
    GovSite *site            # NULL: the call is not timed
    unsigned long long key
    int used
    long regions             # the module's parallel region count before the call
    double t0


cdef inline unsigned long long gov_mix(unsigned long long h) noexcept nogil:
    """splitmix64's finaliser: every input bit moves every output bit."""
    h ^= h >> 30
    h *= 0xbf58476d1ce4e5b9ULL
    h ^= h >> 27
    h *= 0x94d049bb133111ebULL
    h ^= h >> 31
    return h


cdef inline unsigned long long gov_key(int kind, long long a, long long b, long long c,
                                       long long d) noexcept nogil:
    """The site key of a call of `kind` (one per kernel function of a module) and shape
    (a, b, c, d): never 0."""
    cdef unsigned long long h = gov_mix(<unsigned long long>(kind + 1) * 0x9e3779b97f4a7c15ULL)
    h = gov_mix(h ^ <unsigned long long>a)
    h = gov_mix(h ^ <unsigned long long>b)
    h = gov_mix(h ^ <unsigned long long>c)
    h = gov_mix(h ^ <unsigned long long>d)
    return h | 1


cdef inline GovSite *gov_site(GovSite *sites, unsigned long long key) noexcept nogil:
    """The site of `key`: found among GOV_SITE_PROBE slots from its home slot, else the first
    empty one of them; when all are taken, the first serial one (it had learned nothing), else
    the home slot is taken over (what it had learned is lost)."""
    cdef Py_ssize_t home = <Py_ssize_t>(key % GOV_SITES), i, j
    cdef GovSite *s
    cdef GovSite *empty = NULL
    cdef GovSite *serial = NULL
    for i in range(GOV_SITE_PROBE):
        j = (home + i) % GOV_SITES
        s = &sites[j]
        if s.key == key:
            return s
        if s.key == 0 and empty == NULL:
            empty = s
        if s.key != 0 and s.serial and serial == NULL:
            serial = s
    s = empty if empty != NULL else serial if serial != NULL else &sites[home]
    s.key = key
    s.calls = 0
    s.serial = 0
    s.last = 0
    gov_reset(&s.g, 0)
    return s


cdef inline int gov_begin(GovCall *c, GovSite *sites, bint dynamic, unsigned long long key,
                          int n_threads) noexcept:
    """The thread count for a call (at most n_threads) of site `key`; gov_end(c) when it has
    returned. Off (n_threads as given, nothing timed) without `dynamic` or with one thread.
    Called with the GIL held (the table has no lock)."""
    cdef GovSite *s
    c.site = NULL
    c.used = n_threads
    c.t0 = 0.0   # (read only for a governed call, which sets it below; GCC cannot tell)
    if not dynamic or n_threads <= 1:
        return n_threads
    s = gov_site(sites, key)
    s.calls += 1
    c.sites = sites
    c.site = s
    c.key = key
    c.regions = fnn_parallel_count()
    if s.serial:
        s.last = n_threads
        return n_threads
    c.used = gov_threads(&s.g, n_threads)
    s.last = c.used
    c.t0 = fnn_wtime()
    return c.used


cdef inline void gov_end(GovCall *c) noexcept:
    """The call gov_begin(c, ...) counted for has returned: report its time (only a call that
    completed: one that raised is not a step of the machine's speed). With the GIL held."""
    cdef double seconds
    cdef bint started
    if c.site == NULL or c.site.key != c.key:
        return      # not governed, or its slot was taken over meanwhile (another Python thread)
    started = fnn_parallel_count() != c.regions   # (or another Python thread's call did)
    if c.site.serial:
        if started:
            c.site.serial = 0   # it does start regions now: timed from the next call
            gov_reset(&c.site.g, c.used)   # (c.used: the full count it was given)
        return
    seconds = fnn_wtime() - c.t0
    if c.used > 1 and not started:
        c.site.serial = 1   # given several threads, it started no parallel region
        return
    gov_site_record(c.sites, c.site, c.used, seconds)


cdef inline void gov_site_record(GovSite *sites, GovSite *s, int used,
                                 double seconds) noexcept nogil:
    """gov_record for site s of the table `sites`; when it makes s move, the module's other
    timed sites that run the count s left (same limit, between probes) try the way s went at
    the end of their running window (gov_nudge)."""
    cdef int before = s.g.cur
    cdef Py_ssize_t i
    gov_record(&s.g, used, seconds)
    if s.g.cur == before:
        return
    for i in range(GOV_SITES):
        if (&sites[i] != s and sites[i].key != 0 and not sites[i].serial
                and sites[i].g.limit == s.g.limit and sites[i].g.cur == before):
            gov_nudge(&sites[i].g, s.g.turn)


cdef inline list gov_site_list(GovSite *sites):
    """The occupied sites, as dicts (tests and diagnostics)."""
    cdef Py_ssize_t i
    cdef list out = []
    for i in range(GOV_SITES):
        if sites[i].key != 0:
            out.append({"key": sites[i].key, "calls": sites[i].calls,
                        "serial": bool(sites[i].serial), "last": sites[i].last,
                        "limit": sites[i].g.limit, "current": sites[i].g.cur,
                        "probe": sites[i].g.probe, "phase": sites[i].g.phase,
                        "probes": sites[i].g.probes,
                        "backoff": sites[i].g.backoff, "scale": sites[i].g.scale})
    return out


cdef inline void gov_sites_clear(GovSite *sites) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(GOV_SITES):
        sites[i].key = 0


cdef inline void gov_sites_set_current(GovSite *sites, int count) noexcept nogil:
    """gov_set_current on every timed site (count clamped to [1, its limit])."""
    cdef Py_ssize_t i
    for i in range(GOV_SITES):
        if sites[i].key != 0 and not sites[i].serial and sites[i].g.limit >= 1:
            gov_set_current(&sites[i].g, max(1, min(count, sites[i].g.limit)))
