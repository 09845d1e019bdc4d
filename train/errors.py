"""Errors a user causes and can fix: main.py prints their message on one line.

`UserError` is raised for problems of the run's state (no intact checkpoint left, a
full disk, a non-finite loss, a missing `init_from`); bad config values and missing
data raise `ValueError` or `FileNotFoundError` naming the key or file, which main.py
reports the same way. `DEBUG_ENV=1` (or `--verbosity=1`) shows the traceback instead.
"""

import contextlib
import errno
import os

DEBUG_ENV = 'CCI_C2S2_TRACEBACK'
# For tests: a write to this path (a checkpoint's final directory or a JSON file)
# fails with ENOSPC, as on a full disk.
FULL_DISK_ENV = 'CCI_C2S2_FULL_DISK_AT'


class UserError(Exception):
  """A problem the user can fix, stated in one line that names the path or key."""


class MissingInputError(UserError, FileNotFoundError):
  """A workdir or file that the config or a flag names does not exist."""


class DiskFullError(UserError, OSError):
  """A write failed for lack of space; the message names the path."""

  def __init__(self, path: str):
    super().__init__(
        f'No space left on the device while writing {path}; what was written before '
        'it is intact. Free some space (or use another --workdir) and rerun the same '
        'command to resume.')
    self.path = path


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is ENOSPC (or EDQUOT)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(error):  # tensorstore's wording.
      return True
    error = error.__cause__ or error.__context__
  return False


def fail_if_disk_full_simulated(path: str) -> None:
  """Raises ENOSPC if `FULL_DISK_ENV` names `path` (a test hook)."""
  target = os.environ.get(FULL_DISK_ENV, '')
  if target and os.path.abspath(target) == os.path.abspath(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


@contextlib.contextmanager
def naming_full_disk(path: str):
  """Turns an error caused by a full disk inside the block into `DiskFullError(path)`."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, UserError) or not is_disk_full(e):
      raise
    raise DiskFullError(path) from e
