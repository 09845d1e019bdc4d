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

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from train import dispatch, distributed, errors, export, reporting

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


def _run(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  reporting.quiet_checkpoint_noise()
  distributed.maybe_initialize()  # Before any other JAX call.
  logging.info('JAX %s, %d process(es), devices: %s', jax.__version__,
               jax.process_count(), jax.devices())
  config = _config()
  if _MODE.value == 'train' and config is None:
    raise app.UsageError('--config is required to train.')
  dispatch.run(config, _WORKDIR.value, _MODE.value, overwrite=_OVERWRITE.value,
               reference=_REFERENCE.value, pes=_PES.value, formats=tuple(_FORMAT.value),
               batch=_BATCH.value)

main = reporting.reporting_user_errors(_run, lambda: _WORKDIR.value)

if __name__ == '__main__':
  app.run(main, flags_parser=reporting.parse_flags)
