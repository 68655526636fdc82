# The call governor's table and switch, included by every kernel module whose functions take
# n_threads (fastnn_governor.pxd: gov_begin / gov_end; fastnn/_threads.py sets the switch).
# (An include, not a pxd: a pxd cannot hold a module's variables or def functions.)
from fastnn_openmp cimport fnn_parallel_count
from fastnn_governor cimport (GovSite, GovCall, GOV_SITES, gov_key, gov_begin, gov_end,
                             gov_site_list, gov_sites_clear, gov_sites_set_current,
                             gov_site_record)

cdef GovSite _sites[GOV_SITES]
cdef bint _dynamic = True


def set_dynamic(bint on):
    """Let the call governor give this module's calls fewer threads than asked for while
    fewer are measured to be faster (fastnn.set_dynamic sets every module's)."""
    global _dynamic
    _dynamic = on


def governed_sites():
    """The call governor's sites in this module, a dict each (tests, diagnostics)."""
    return gov_site_list(_sites)


def clear_sites():
    """Forget every site (tests)."""
    gov_sites_clear(_sites)


def set_sites_current(int count):
    """Give every timed site's calls `count` threads (at most its limit) from now on, measured
    afresh (tests: the kernels run the count the governor gives)."""
    gov_sites_set_current(_sites, count)


def site_record(unsigned long long key, int used, double seconds):
    """Report a made-up call time to the site of `key` (from governed_sites), as gov_end
    reports a real one (tests: the governor's decisions, with simulated times). False when no
    site has that key."""
    cdef Py_ssize_t i
    for i in range(GOV_SITES):
        if _sites[i].key == key and key != 0:
            gov_site_record(_sites, &_sites[i], used, seconds)
            return True
    return False


def parallel_regions():
    """Parallel regions of more than one thread this module has started (tests)."""
    return fnn_parallel_count()
