r"""Trains or evaluates one experiment.

  python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
  python main.py --config=configs/resnet20_cpu.py --workdir=runs/r20 \
      --config.num_epochs=2
  python main.py --workdir=/tmp/quickstart --mode=eval
  python main.py --workdir=runs/cci --mode=efficiency --reference=runs/dense
  python main.py --workdir=/tmp/quickstart --mode=export --format=stablehlo,onnx

An error the user can fix (a bad config value, missing data or `init_from`, no intact
checkpoint, a full disk, a non-finite loss) ends the run with one line on stderr and
exit status 1; `--verbosity=1` or CCI_C2S2_TRACEBACK=1 shows the traceback instead.
"""

import logging as std_logging
import os
import sys
import warnings

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from train import distributed, errors, export, export_run, loop, workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'efficiency', 'export'],
    'train (resumes if the workdir has checkpoints), eval, efficiency (the '
    'accelerator-model table of the latest checkpoint), or export (the finished '
    "run's model for inference, into WORKDIR/export).")
_REFERENCE = flags.DEFINE_string(
    'reference', '', 'efficiency: a dense workdir whose weights choose the '
    'unstructured masks compared at the same density.')
_PES = flags.DEFINE_integer('pes', 256, 'efficiency: processing elements modelled.')
_FORMAT = flags.DEFINE_list('format', ['stablehlo'],
                            f'export: any of {", ".join(export.FORMATS)} (onnx needs '
                            'pip install -r requirements-export.txt).')
_BATCH = flags.DEFINE_string('batch', 'dynamic',
                             'export: the batch size of the artifacts, or dynamic.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Delete checkpoints of another experiment in --workdir.')
flags.mark_flag_as_required('workdir')


class _QuietCheckpointLogs(std_logging.Filter):
  """Keeps orbax's per-save INFO lines out of the progress log, and its traceback of a
  save that ran out of space (main.py reports that in one line)."""

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


def _exit_with_one_line(message: str) -> None:
  logging.flush()
  # Orbax's coroutines cut short by the error would warn when collected at exit.
  warnings.filterwarnings('ignore', 'coroutine .* was never awaited', RuntimeWarning)
  print(f'Error: {" ".join(message.split())}', file=sys.stderr, flush=True)
  sys.exit(1)


def _report(error: Exception) -> None:
  """Exits with `error` in one line, unless a traceback was asked for."""
  if os.environ.get(errors.DEBUG_ENV) or flags.FLAGS.verbosity >= 1:
    raise error
  message = str(error)  # ValueError, FileNotFoundError: config values, data, workdirs.
  if errors.is_disk_full(error) and not isinstance(error, errors.UserError):
    message = str(errors.DiskFullError(getattr(error, 'filename', None) or _WORKDIR.value))
  _exit_with_one_line(message)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser; a `--config.KEY` override that names no key stops in one line."""
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError as e:  # ml_collections: "'key'\nDid you mean ...?"
    if os.environ.get(errors.DEBUG_ENV):
      raise
    message = str(e).strip('\'"').replace("\\'", "'").replace('\\n', ' ')
    _exit_with_one_line(f'a --config override names no config key: {message}')


def _config() -> ml_collections.ConfigDict | None:
  """The --config file's config; one line naming the file if it cannot be loaded."""
  config = _CONFIG.value
  try:
    if config is not None:
      config.get('seed')  # A failed load raises at its first use.
    return config
  except OSError as e:
    cause = e
    while cause.__cause__ is not None:
      cause = cause.__cause__
    raise errors.UserError(
        f'--config={config_flags.get_config_filename(flags.FLAGS["config"])} cannot be '
        f'loaded: {cause}') from e


def _caused_by_user(error: Exception) -> bool:
  """The project's user errors, bad values (ValueError), missing files, a full disk."""
  return isinstance(error, (errors.UserError, ValueError, FileNotFoundError)) or (
      errors.is_disk_full(error))


def main(argv: list[str]) -> None:
  try:
    _run(argv)
  except Exception as e:  # pylint: disable=broad-except
    if not _caused_by_user(e):
      raise
    _report(e)


def _run(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietCheckpointLogs())
  sys.unraisablehook = _quiet_closed_loop_callbacks
  distributed.maybe_initialize()  # Before any other JAX call.
  logging.info('JAX %s, %d process(es), devices: %s', jax.__version__,
               jax.process_count(), jax.devices())
  config = _config()
  if _MODE.value != 'train':
    config = config or workdir_lib.load_config(_WORKDIR.value)
  if _MODE.value == 'eval':
    loop.evaluate_checkpoint(config, _WORKDIR.value)
  elif _MODE.value == 'efficiency':
    loop.efficiency(config, _WORKDIR.value, _REFERENCE.value, _PES.value)
  elif _MODE.value == 'export':
    export_run.export_workdir(config, _WORKDIR.value, _FORMAT.value, _BATCH.value)
  elif config is None:
    raise app.UsageError('--config is required to train.')
  else:
    loop.train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
