"""The training loop: steps, progress, metrics, checkpoints, resume and summary."""

import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from train import (c2s2_driver, channel_baselines, checkpoints, data, errors, experiment,
                   metrics, provenance, report, steps)
from train import workdir as workdir_lib
from train.checkpoints import Checkpointer, abstract_like, check_finite

SUMMARY_FILE = 'summary.json'
EVAL_FILE = 'eval.json'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False,
                       stop_at_step: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Args:
    config: the experiment config.
    workdir: where checkpoints, metrics and `summary.json` go.
    overwrite: start again in a workdir that holds another experiment.
    stop_at_step: stop after this step without a final checkpoint, as an
      interruption would (for tests).

  Returns:
    The summary (also written to `workdir/summary.json`), or {} if stopped early.
  """
  revision = provenance.revision()  # The code that starts the run.
  exp = experiment.build(config, workdir)  # Every check before the workdir is touched.
  if config.init_from and config.channel_pruning.method == 'none':
    checkpoints.check_variables(config.init_from, exp.variables)
  workdir_lib.prepare(workdir, config, overwrite)
  if overwrite:  # The old run's widths.json is gone: rebuild without it.
    exp = experiment.build(config, workdir)
  original = config
  if config.channel_pruning.method == 'c2s2':
    # Select and remove channels, then fine-tune the compact model.
    config = c2s2_driver.select(config, workdir, stop_at_step)
    if config is None:
      return {}
    exp = experiment.build(config, workdir)
  elif config.channel_pruning.method in channel_baselines.METHODS:
    config = channel_baselines.select(config, workdir)  # One-shot, then fine-tune.
    exp = experiment.build(config, workdir)
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
  summary_path = os.path.join(workdir, SUMMARY_FILE)
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

  end = min(exp.total_steps, stop_at_step or exp.total_steps)
  wall_start = time.time() - meta.get('wall_time_s', 0.0)
  train_time, train_images = meta.get('train_time_s', 0.0), meta.get('train_images', 0)
  pending, tick, tick_step = [], None, start
  for step in range(start, end):
    state, step_metrics = train_step(state, steps.to_global(next(batches), exp.mesh))
    pending.append(step_metrics)
    done = step + 1
    if tick is None:  # The first step compiles: time from its end.
      jax.block_until_ready(state)
      tick, tick_step, pending = time.time(), done, []
    boundary = [done % config.log_every_steps == 0,
                done % config.checkpoint_every_steps == 0 or done == exp.total_steps,
                config.eval_every_steps > 0 and done % config.eval_every_steps == 0]
    if not any(boundary):
      continue
    if pending:
      values = experiment.host_metrics(pending)
      now = time.time()
      train_time += now - tick
      train_images += (done - tick_step) * config.batch_size
      rate = (done - tick_step) * config.batch_size / max(now - tick, 1e-9)
      tick, tick_step, pending = now, done, []
      check_finite(state, config.on_nonfinite, ckpt)
      if writer:
        writer.write(done, 'train', {**values, 'images_per_s': rate})
      logging.info(metrics.progress_line(
          done, exp.total_steps, values, rate,
          (exp.total_steps - done) * config.batch_size / max(rate, 1e-9)))
    if boundary[2] and done < exp.total_steps:
      result = experiment.evaluate(exp, state, eval_step)
      if writer:
        writer.write(done, 'test', result)
      logging.info('step %d: test top-1 %.4f loss %.4f', done, result['top1'],
                   result['loss'])
      tick = time.time()  # Evaluation time is not training time.
    if boundary[1]:
      check_finite(state, config.on_nonfinite, ckpt)
      ckpt.save(done, state, {'wall_time_s': time.time() - wall_start,
                              'train_time_s': train_time,
                              'train_images': train_images})
  batches.close()
  ckpt.wait()
  if end < exp.total_steps:
    ckpt.close()
    return {}

  result = experiment.evaluate(exp, state, eval_step)
  summary = {
      **result,
      **experiment.model_size(exp),
      'steps': exp.total_steps,
      'nonfinite_steps_skipped': int(state.nonfinite_steps),
      'wall_time_s': time.time() - wall_start,
      'train_time_s': train_time,
      'train_images_per_s': train_images / train_time if train_time else 0.0,
      'model': config.model.name,
      'seed': config.seed,
      'devices': jax.device_count(),
      'platform': jax.devices()[0].platform,
      'revision': revision,
      'hardware': provenance.hardware(),
  }
  if exp.method.sparsity is not None:
    sparse, table = report.sparsity_report(exp, state)
    summary.update(sparse, macs=sparse['macs_kept'])
    if is_chief:
      workdir_lib.write_json(os.path.join(workdir, report.LAYERS_FILE), table)
  if config.channel_pruning.method != 'none':
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
    workdir_lib.write_json(os.path.join(workdir, EVAL_FILE), result)
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
    workdir_lib.write_json(os.path.join(workdir, report.EFFICIENCY_FILE), result)
  return result
