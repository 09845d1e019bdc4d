r"""Trains or evaluates one experiment.

  python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart
  python main.py --config=configs/resnet20_cpu.py --workdir=runs/r20 \
      --config.num_epochs=2
  python main.py --workdir=/tmp/quickstart --mode=eval
  python main.py --workdir=runs/cci --mode=efficiency --reference=runs/dense
  python main.py --workdir=/tmp/quickstart --mode=export --format=stablehlo,onnx
"""

import logging as std_logging

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from train import distributed, export, export_run, loop, workdir as workdir_lib

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
_FORMAT = flags.DEFINE_list('format', list(export.FORMATS),
                            f'export: any of {", ".join(export.FORMATS)}.')
_BATCH = flags.DEFINE_string('batch', 'dynamic',
                             'export: the batch size of the artifacts, or dynamic.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Delete checkpoints of another experiment in --workdir.')
flags.mark_flag_as_required('workdir')


class _QuietCheckpointLogs(std_logging.Filter):
  """Keeps orbax's per-save INFO lines out of the progress log."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietCheckpointLogs())
  distributed.maybe_initialize()  # Before any other JAX call.
  logging.info('JAX %s, %d process(es), devices: %s', jax.__version__,
               jax.process_count(), jax.devices())
  config = _CONFIG.value
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
  app.run(main)
