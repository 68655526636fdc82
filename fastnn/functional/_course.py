"""The course's caches are tuples (``x, w, b = cache``, ``fc_cache, relu_cache = cache``,
``dropout_param, mask = cache``). fastnn's caches that stand for one take the same ways apart
through CourseTuple."""
import operator


class CourseTuple:
    """len(), iteration, indexing and slicing as the course's tuple, from the subclass's
    ``_course_len()`` (which raises TypeError for a cache with no course counterpart) and
    ``_course_item(i)`` (0 <= i < len). Always true, whatever its length. ``_course_entries``
    names the entries in an index error."""

    __slots__ = ()
    _course_entries = ""

    def __len__(self):
        return self._course_len()

    def __bool__(self):   # (not len(): a cache with no course counterpart has none, and is true)
        return True

    def __iter__(self):
        return iter([self._course_item(i) for i in range(self._course_len())])

    def __getitem__(self, i):
        n = self._course_len()
        if isinstance(i, slice):
            return tuple(self._course_item(j) for j in range(n)[i])
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"cache index out of range (it has {n} entries"
                             f"{self._course_entries})")
        return self._course_item(i % n)
