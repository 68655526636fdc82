# The call governor's table and switch, included by every kernel module whose functions take
# n_threads (fastnn_governor.pxd: gov_begin / gov_end; fastnn/_threads.py sets the switch).
# (An include, not a pxd: a pxd cannot hold a module's variables or def functions.)
from fastnn_openmp cimport fnn_parallel_count
from fastnn_governor cimport (GovSite, GovCall, GOV_SITES, gov_key, gov_begin, gov_end,
                             gov_site_list, gov_sites_clear, gov_sites_set_current)

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


def parallel_regions():
    """Parallel regions of more than one thread this module has started (tests)."""
    return fnn_parallel_count()
