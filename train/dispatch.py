"""One entry for every mode of `main.py`: `run(config, workdir, mode, ...)`.

Training (`train_and_evaluate`) checks the config, records it in the workdir, runs the
channel selection of `config.channel_pruning.method` (C2S2's progressive selection or
a baseline's one-shot pruning, each saving the compact variables in
`workdir/selection`), then the method-agnostic training loop (`loop.train`) on the
dense, CCI-sparse or compact model. The other modes read a finished workdir.
"""

from typing import Any

import ml_collections

from train import checkpoints, experiment, export, export_run, loop, provenance, saved_config

MODES = ('train', 'eval', 'efficiency', 'export')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False,
                       stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (selection first, if any), resuming where it stopped.

  Args:
    config: the experiment config.
    workdir: where checkpoints, metrics and `summary.json` go.
    overwrite: start again in a workdir that holds another experiment.
    stop_at_step: stop after this step (of the selection, then of the training)
      without a final checkpoint, as an interruption would (for tests).

  Returns:
    The summary (also written to `workdir/summary.json`), or {} if stopped early.
  """
  revision = provenance.revision()  # The code that starts the run.
  exp = experiment.build(config, workdir)  # Every check before the workdir is touched.
  if config.init_from and config.channel_pruning.method == 'none':
    checkpoints.check_variables(config.init_from, exp.variables)
  saved_config.prepare(workdir, config, overwrite)
  # The selection code is imported only by the runs that use it (see c2s2/__init__.py).
  method = config.channel_pruning.method
  if method == 'c2s2':
    from train import c2s2_driver
    finetune = c2s2_driver.select(config, workdir, stop_at_step)
    if finetune is None:
      return {}
  elif method != 'none':  # experiment.build accepted it: a baseline.
    from train import channel_baselines
    assert method in channel_baselines.METHODS, method  # experiment.validate's list.
    finetune = channel_baselines.select(config, workdir)
  else:
    # Overwritten: the old run's widths.json is gone, so build without it.
    return loop.train(config, workdir, exp=None if overwrite else exp,
                      revision=revision, stop_at_step=stop_at_step)
  return loop.train(finetune, workdir, original=config, revision=revision,
                    stop_at_step=stop_at_step)


def run(config: ml_collections.ConfigDict | None, workdir: str, mode: str = 'train', *,
        overwrite: bool = False, reference: str = '', pes: int = 256,
        formats: tuple[str, ...] = export.FORMATS[:1],
        batch: str = 'dynamic') -> dict[str, Any]:
  """Runs `mode` on `workdir`; without `config`, the one the workdir was trained with.

  Args:
    mode: one of `MODES`: train (resumes), eval (the latest checkpoint), efficiency
      (its accelerator-model table; `reference`, `pes`) or export (`formats`, `batch`).

  Raises:
    ValueError: training without a config, or an unknown mode.
  """
  if mode not in MODES:
    raise ValueError(f'mode={mode!r}; choose one of {MODES}.')
  if mode == 'train':
    if config is None:
      raise ValueError('--config is required to train.')
    return train_and_evaluate(config, workdir, overwrite=overwrite)
  config = config or saved_config.load_config(workdir)
  if mode == 'eval':
    return loop.evaluate_checkpoint(config, workdir)
  if mode == 'efficiency':
    return loop.efficiency(config, workdir, reference, pes)
  return export_run.export_workdir(config, workdir, formats, batch)
