"""How main.py reports: one line for an error the user can fix, quiet orbax noise.

An error the user caused (`errors.UserError`, a bad value `ValueError`, a missing file,
a full disk) ends the run with `Error: MESSAGE` on one stderr line and exit status 1;
`--verbosity=1` or `errors.DEBUG_ENV=1` re-raises it with its traceback instead.
"""

import logging as std_logging
import os
import sys
import warnings
from collections.abc import Callable

from absl import app, flags, logging

from train import errors


class QuietCheckpointLogs(std_logging.Filter):
  """Keeps orbax's per-save INFO lines out of the progress log, and its traceback of a
  save that ran out of space (reported in one line instead)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if 'orbax' not in record.pathname:
      return True
    if record.exc_info and errors.is_disk_full(record.exc_info[1]):
      return flags.FLAGS.verbosity >= 1
    return record.levelno >= std_logging.WARNING


def _quiet_closed_loop_callbacks(unraisable) -> None:
  """Drops tensorstore's callbacks into the event loop of a failed orbax write (each
  would print a traceback); everything else goes to Python's hook."""
  if (isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == 'Event loop is closed'
      and flags.FLAGS.verbosity < 1):
    return
  sys.__unraisablehook__(unraisable)


def quiet_checkpoint_noise() -> None:
  """Installs both filters above (call once, after flags are parsed)."""
  logging.get_absl_handler().addFilter(QuietCheckpointLogs())
  sys.unraisablehook = _quiet_closed_loop_callbacks


def exit_with_one_line(message: str) -> None:
  logging.flush()
  # Orbax's coroutines cut short by the error would warn when collected at exit.
  warnings.filterwarnings('ignore', 'coroutine .* was never awaited', RuntimeWarning)
  print(f'Error: {" ".join(message.split())}', file=sys.stderr, flush=True)
  sys.exit(1)


def _traceback_wanted() -> bool:
  return bool(os.environ.get(errors.DEBUG_ENV)) or flags.FLAGS.verbosity >= 1


def caused_by_user(error: Exception) -> bool:
  """The project's user errors, bad values (ValueError), missing files, a full disk."""
  return isinstance(error, (errors.UserError, ValueError, FileNotFoundError)) or (
      errors.is_disk_full(error))


def reporting_user_errors(run: Callable[[list[str]], None],
                          workdir: Callable[[], str]) -> Callable[[list[str]], None]:
  """`run` whose user errors end in one line (`workdir()`: the path a full disk names
  when the error itself names none)."""

  def main(argv: list[str]) -> None:
    try:
      run(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not caused_by_user(e) or _traceback_wanted():
        raise
      message = str(e)
      if errors.is_disk_full(e) and not isinstance(e, errors.UserError):
        message = str(errors.DiskFullError(getattr(e, 'filename', None) or workdir()))
      exit_with_one_line(message)

  return main


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser; a `--config.KEY` override that names no key stops in one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError as e:  # ml_collections: "'key'\nDid you mean ...?"
    if os.environ.get(errors.DEBUG_ENV):
      raise
    message = str(e).strip('\'"').replace("\\'", "'").replace('\\n', ' ')
    exit_with_one_line(f'a --config override names no config key: {message}')
