"""The training loop of one experiment: resume, the steps (`runner.run_steps`), summary.

It knows no pruning method beyond its `experiment.Experiment`: channel selection runs
before it (`train.dispatch`), CCI inside the method's optimiser and forward pass.
"""

import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from train import (checkpoints, data, errors, experiment, metrics, provenance, report,
                   runner, steps)
from train import workdir as workdir_lib
from train.checkpoints import Checkpointer, abstract_like


def train(config: ml_collections.ConfigDict, workdir: str, *,
          exp: experiment.Experiment | None = None,
          original: ml_collections.ConfigDict | None = None, revision: str = '',
          stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains `config` in the prepared `workdir`, resuming from its latest checkpoint.

  Args:
    config: the experiment config (for a channel-pruned run: its fine-tune's).
    workdir: where checkpoints, metrics and `summary.json` go.
    exp: `config`'s experiment, if already built.
    original: the config before channel selection, if any (the summary then compares
      the compact model with its original).
    revision: the code that started the run (`provenance.revision()`).
    stop_at_step: stop after this step without a final checkpoint, as an
      interruption would (for tests).

  Returns:
    The summary (also written to `workdir/summary.json`), or {} if stopped early.
  """
  exp = exp or experiment.build(config, workdir)
  experiment.write_widths(exp, workdir)
  ckpt = Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR),
                      config.keep_checkpoints)
  restored = ckpt.restore_latest(lambda _: abstract_like(
      experiment.abstract_state(exp), steps.replicated(exp.mesh)))
  if restored:
    start, state, meta = restored
    logging.info('Resuming from step %d of %d.', start, exp.total_steps)
  else:
    start, state, meta = 0, experiment.init_state(exp), {}
  is_chief = jax.process_index() == 0
  summary_path = os.path.join(workdir, workdir_lib.SUMMARY_FILE)
  # Killed after its last checkpoint but before its summary (or the summary is
  # damaged): evaluate and log again.
  redo_final = is_chief and start == exp.total_steps and (
      workdir_lib.read_record(summary_path) is None)
  writer = metrics.MetricWriter(workdir, start, redo_final) if is_chief else None
  train_step = steps.make_train_step(exp.model, exp.method, exp.schedule,
                                     exp.dataset.mean, exp.dataset.std, exp.mesh, exp.task)
  eval_step = steps.make_eval_step(exp.model, exp.method, exp.dataset.mean,
                                   exp.dataset.std, exp.mesh, exp.task)
  batches = data.train_batches(
      exp.dataset.train, batch_size=config.batch_size, seed=config.seed,
      start_step=start, crop_padding=config.data.crop_padding,
      flip=config.data.flip, process_index=jax.process_index(),
      process_count=jax.process_count())
  wall_start = time.time() - meta.get('wall_time_s', 0.0)
  clock = runner.Clock(meta.get('train_time_s', 0.0), meta.get('train_images', 0))
  report_to = runner.Reporting(
      checkpointer=ckpt, writer=writer, batch_size=config.batch_size,
      log_every=config.log_every_steps, checkpoint_every=config.checkpoint_every_steps,
      on_nonfinite=config.on_nonfinite, total=exp.total_steps,
      evaluate=lambda state: experiment.evaluate(exp, state, eval_step),
      eval_every=config.eval_every_steps, clock=clock,
      meta=lambda: {'wall_time_s': time.time() - wall_start,
                    'train_time_s': clock.train_time_s,
                    'train_images': clock.train_images})
  try:
    state, finished = runner.run_steps(state, train_step, batches, start,
                                       exp.total_steps, exp.mesh, report_to,
                                       stop_at=stop_at_step)
  finally:
    batches.close()
  ckpt.wait()
  if not finished:
    ckpt.close()
    return {}

  result = experiment.evaluate(exp, state, eval_step)
  summary = {
      **result,
      **experiment.model_size(exp),
      'steps': exp.total_steps,
      'nonfinite_steps_skipped': int(state.nonfinite_steps),
      'wall_time_s': time.time() - wall_start,
      'train_time_s': clock.train_time_s,
      'train_images_per_s': (clock.train_images / clock.train_time_s
                             if clock.train_time_s else 0.0),
      'model': config.model.name,
      'seed': config.seed,
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
      'revision': revision,
      'code': provenance.code_files(),
      'hardware': provenance.hardware(),
  }
  if exp.method.sparsity is not None:
    sparse, table = report.sparsity_report(exp, state)
    summary.update(sparse, macs=sparse['macs_kept'])
    if is_chief:
      workdir_lib.write_json(os.path.join(workdir, workdir_lib.LAYERS_FILE), table)
  if original is not None:
    summary.update(report.channel_report(exp, original, config.channel_pruning.latency_batch))
  if writer:
    if start < exp.total_steps or redo_final:  # A finished run logs nothing twice.
      writer.write(exp.total_steps, 'test', result)
    writer.close()
    workdir_lib.write_json(summary_path, summary)
  ckpt.close()
  logging.info('Done: test top-1 %.4f, loss %.4f, %.0f s.', summary['top1'],
               summary['loss'], summary['wall_time_s'])
  return summary


def restore_latest(config: ml_collections.ConfigDict,
                   workdir: str) -> tuple[experiment.Experiment, Any, int]:
  """The experiment of `config` and the latest state saved in `workdir`."""
  exp = experiment.build(config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR),
                      config.keep_checkpoints, read_only=True)
  restored = ckpt.restore_latest(lambda _: abstract_like(
      experiment.abstract_state(exp), steps.replicated(exp.mesh)))
  ckpt.close()
  if restored is None:
    raise errors.MissingInputError(f'No checkpoint in {ckpt.directory}.')
  step, state, _ = restored
  logging.info('Restored checkpoint %s.', ckpt.path(step))
  return exp, state, step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint of `workdir`; writes `eval.json`."""
  exp, state, step = restore_latest(config, workdir)
  eval_step = steps.make_eval_step(exp.model, exp.method, exp.dataset.mean,
                                   exp.dataset.std, exp.mesh, exp.task)
  result = {**experiment.evaluate(exp, state, eval_step), 'step': step}
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.EVAL_FILE), result)
  logging.info('Checkpoint %d (%s): test top-1 %.4f, loss %.4f.', step,
               os.path.join(workdir, workdir_lib.CHECKPOINT_DIR, str(step)), result['top1'],
               result['loss'])
  return result


def efficiency(config: ml_collections.ConfigDict, workdir: str, reference: str,
               pes: int) -> dict[str, Any]:
  """The accelerator-model table of the latest checkpoint; writes `efficiency.json`."""
  exp, state, step = restore_latest(config, workdir)
  reference = reference or config.init_from
  ref = None
  if reference:
    key = '--reference' if reference != config.init_from else 'config.init_from'
    ref = checkpoints.load_variables(reference, exp.variables, key)['params']
  elif exp.method.sparsity is not None:
    raise ValueError(
        f'{workdir} is CCI-sparse: its pruned weights are zero, so magnitude masks of '
        'its own weights would just repeat the CCI mask. Pass --reference=WORKDIR of a '
        'dense run (or of an unstructured-pruned run, whose nonzeros are then used).')
  result = {**report.efficiency_report(exp, state, ref, pes), 'step': step,
            'unstructured_from': reference or workdir}
  print(report.format_efficiency(result))
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.EFFICIENCY_FILE), result)
  return result
