"""Writing files so that a failure part-way never leaves a partial file behind.

:func:`atomic_write` is the one way fastnn writes a file it may replace (model files, Solver
checkpoints): the data go to a temporary file in the target's folder, which is flushed to disk
and renamed over the target only when everything was written. When writing fails (disk full, a
file-size or quota limit, an exception in the caller's block, KeyboardInterrupt), the temporary
file is removed, the error propagates, and the target is as it was before.
"""
import contextlib
import errno
import os
import secrets
import stat
import zipfile

import numpy as np

__all__ = ["atomic_write", "check_writable", "write_npz"]


def _create_temp(directory):
    """(fd, name) of a new file in `directory`, created with mode 0o666 less the umask (what a
    plain open(path, 'w') gives; the kernel applies the umask, so it is never read: reading it
    means setting it, for every thread). O_EXCL: never someone else's file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = os.path.join(directory, f".fastnn-{secrets.token_hex(8)}.tmp")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory!r}")


def _create_temp_named(directory):
    """_create_temp, with an OSError named as the folder, not as the temporary file's hidden
    name (which the caller never asked for): a missing folder, one that cannot be written."""
    try:
        return _create_temp(directory)
    except OSError as exc:
        if exc.errno is None:
            raise   # (_create_temp's own: it names the folder)
        raise type(exc)(exc.errno, f"cannot make a file in the folder: {exc.strerror}",
                        directory) from None


@contextlib.contextmanager
def atomic_write(path, text=False):
    """``with atomic_write(path) as f:`` yields a file open for writing (binary, or UTF-8 text
    with ``text=True``); when the block ends without an error the file is flushed, fsync'ed and
    renamed to ``path`` (replacing it). When the block or any of those steps raises, the
    temporary file is removed and the exception propagates; ``path`` is left untouched. An
    OSError from writing the file (errno and message, no file name: a full disk, a file size
    limit) is raised as the same error naming ``path``."""
    given = os.fspath(path)
    _refuse_folder_path(given)
    # through a symbolic link to the file it names (as open(path, "w") writes), so that the
    # link stays a link; the temporary file sits beside that file, on its file system
    path = os.path.realpath(given)
    directory = os.path.dirname(path)
    mode = _target_mode(path)
    fd, tmp = _create_temp_named(directory)
    try:
        try:
            f = os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            _fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.chmod(tmp, stat.S_IREAD | stat.S_IWRITE)   # (Windows refuses to delete read-only files)
        except OSError:
            pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), given) from None
        raise
    _sync_directory(directory)


def _refuse_folder_path(given):
    """IsADirectoryError naming `given` when it ends in a path separator ("m.npz/"): it names a
    folder, as open() takes it (EISDIR); os.path.realpath would drop the separator, so the
    file "m.npz" would be written, which a load of "m.npz/" cannot read."""
    text = os.fsdecode(given)
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
        raise IsADirectoryError(errno.EISDIR, "a path ending in a separator names a folder, "
                                "not a file", given)


def _target_mode(path):
    """The permission bits of the file at `path` (a file replaced keeps them), None when there
    is none; OSError when something other than a regular file is there (renaming over a
    device, /dev/null as root, or a FIFO would replace it with a file), PermissionError when
    this process may not write the file (renaming over it needs only the folder's
    permission, so a read-only file would be replaced where open(path, "w") refuses it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a folder, not a file", path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file, so not replaced", path)
    # (as open(path, "w") refuses it, with the effective ids where the OS can; root may write)
    if not os.access(path, os.W_OK, effective_ids=os.access in os.supports_effective_ids):
        raise PermissionError(errno.EACCES, "the file is read-only, so not replaced", path)
    return st.st_mode & 0o777


def check_writable(path):
    """OSError unless atomic_write(path) can write there: nothing or a regular file at the
    (resolved) path, and a file can be created in its folder (one is made and removed). An
    existing file is left as it is (a command line checks its output path before a long run)."""
    given = os.fspath(path)
    _refuse_folder_path(given)
    path = os.path.realpath(given)
    _target_mode(path)
    directory = os.path.dirname(path)
    fd, tmp = _create_temp_named(directory)
    os.close(fd)
    os.unlink(tmp)


def _fsync(fd):
    """os.fsync, except where the file system has no such thing (EINVAL/ENOTSUP: some network
    and FUSE file systems): there the data are as safe as that file system makes them."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)):
            raise


def _sync_directory(directory):
    """Make the rename durable too (POSIX: fsync the folder); best effort, never an error."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_npz(f, arrays):
    """The arrays (a dict name -> ndarray) into the open binary file f as an uncompressed .npz
    archive (what np.load reads back by name), refusing to pickle: an object array raises
    ValueError instead of being stored as a pickle, which fastnn's readers would refuse."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)
