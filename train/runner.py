"""The inner loop every stretch of training steps runs through.

The dense and CCI training, the final fine-tune and each phase of C2S2's selection
call `run_steps`: the same progress line, metrics (metrics.jsonl and TensorBoard),
non-finite guard, periodic checkpoints and interruption for all of them.
"""

import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging

from train import metrics, steps
from train.checkpoints import Checkpointer, check_finite

StepFn = Callable[[Any, steps.Batch], tuple[Any, steps.Metrics]]


@dataclasses.dataclass
class Clock:
  """Training time and images, excluding compilation and evaluation (carried in the
  checkpoints' records so that a resumed run reports the whole run's rate)."""
  train_time_s: float = 0.0
  train_images: int = 0


@dataclasses.dataclass
class Reporting:
  """Where a stretch of steps reports and saves, and how often.

  Attributes:
    checkpointer: saves the state every `checkpoint_every` steps.
    writer: the metrics log (None except on the chief process).
    meta: the JSON record saved with each checkpoint.
    batch_size, log_every, checkpoint_every, on_nonfinite: the config's values.
    total: the progress line's last step.
    split: the metrics' split name ('train', or 'selection' for C2S2).
    label: the progress line's prefix (e.g. 'C2S2 unit 0 phase1: ').
    extra: names of further step metrics shown on the progress line.
    evaluate: evaluates the state every `eval_every` steps (0: never) before the end,
      logged under `eval_split`.
    clock: accumulates the training time.
  """
  checkpointer: Checkpointer
  writer: metrics.MetricWriter | None
  meta: Callable[[], dict[str, Any]]
  batch_size: int
  log_every: int
  checkpoint_every: int
  on_nonfinite: str
  total: int
  split: str = 'train'
  label: str = ''
  extra: tuple[str, ...] = ()
  evaluate: Callable[[Any], dict[str, float]] | None = None
  eval_every: int = 0
  eval_split: str = 'test'
  clock: Clock = dataclasses.field(default_factory=Clock)


def host_metrics(values: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Means over steps of device metrics, fetched in one transfer."""
  stacked = jax.device_get(values)
  return {k: float(np.mean([v[k] for v in stacked])) for k in stacked[0]}


def run_steps(state: Any, step_fn: StepFn, batches: Iterator[dict[str, np.ndarray]],
              start: int, end: int, mesh: jax.sharding.Mesh, report: Reporting, *,
              save_at_end: bool = True, stop_at: int | None = None) -> tuple[Any, bool]:
  """Runs the steps `start + 1 .. end` of `step_fn` on `batches`.

  Every `log_every` steps (and at the end) logs the progress line and the mean step
  metrics, and checks that no step was non-finite; every `checkpoint_every` steps (and
  at the end if `save_at_end`) saves the state with `report.meta()`.

  Args:
    stop_at: stop after this step as an interruption would (for tests): no checkpoint
      beyond the periodic ones.

  Returns:
    The state and whether `end` was reached.
  """
  last = min(end, stop_at) if stop_at is not None else end
  ckpt, writer, clock = report.checkpointer, report.writer, report.clock
  pending, tick, tick_step = [], None, start
  for done in range(start + 1, last + 1):
    state, step_metrics = step_fn(state, steps.to_global(next(batches), mesh))
    pending.append(step_metrics)
    if tick is None:  # The first step compiles: time from its end (its metrics count).
      jax.block_until_ready(state)
      tick, tick_step = time.time(), done
    log = done % report.log_every == 0 or done == end
    save = done % report.checkpoint_every == 0 or (save_at_end and done == end)
    evaluate = (report.evaluate is not None and report.eval_every > 0
                and done % report.eval_every == 0 and done < end)
    if done > tick_step and (log or save or evaluate):
      values = host_metrics(pending)
      now = time.time()
      clock.train_time_s += now - tick
      clock.train_images += (done - tick_step) * report.batch_size
      rate = (done - tick_step) * report.batch_size / max(now - tick, 1e-9)
      tick, tick_step, pending = now, done, []
      check_finite(state, report.on_nonfinite, ckpt)
      if writer:
        writer.write(done, report.split, {**values, 'images_per_s': rate})
      logging.info('%s%s', report.label, metrics.progress_line(
          done, report.total, values, rate,
          (report.total - done) * report.batch_size / max(rate, 1e-9), report.extra))
    if evaluate:
      result = report.evaluate(state)
      if writer:
        writer.write(done, report.eval_split, result)
      logging.info('%sstep %d: %s top-1 %.4f loss %.4f', report.label, done,
                   report.eval_split, result['top1'], result['loss'])
      tick = time.time()  # Evaluation time is not training time.
    if save and (done < end or save_at_end):
      check_finite(state, report.on_nonfinite, ckpt)
      ckpt.save(done, state, report.meta())
  return state, last == end
