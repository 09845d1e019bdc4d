"""Metrics as JSON lines and TensorBoard summaries, and a progress line."""

import datetime
import json
import os
from typing import Any, Mapping

import tensorboardX

from train import workdir as workdir_lib

TRAINING_SPLITS = ('train', 'test')
SELECTION_SPLITS = ('selection', 'held_out')  # C2S2's steps and its cost checks.


class MetricWriter:
  """Appends `{"step": s, "split": ..., name: value}` lines and TensorBoard scalars."""

  def __init__(self, workdir: str, resume_step: int, redo_test: bool = False,
               splits: tuple[str, ...] = TRAINING_SPLITS):
    """Opens the log of `workdir`, dropping what a resumed run will log again.

    Args:
      workdir: the run's directory.
      resume_step: the step the run resumes from; later lines of `splits` are dropped.
      redo_test: also drop the test line at `resume_step` (a run resumed at its last
        step evaluates again).
      splits: the splits this writer logs (C2S2's selection and the final fine-tune
        count their steps apart); other splits' lines are kept.
    """
    self.path = os.path.join(workdir, workdir_lib.METRICS_FILE)
    _truncate_after(self.path, resume_step, redo_test, splits)
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, workdir_lib.TENSORBOARD_DIR))

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    record = {'step': step, 'split': split,
              **{k: float(v) for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in values.items():
      self._tb.add_scalar(f'{split}/{name}', float(value), step)

  def close(self) -> None:
    self._tb.close()


def _parse(line: str) -> dict[str, Any] | None:
  try:
    return json.loads(line)
  except json.JSONDecodeError:  # A line torn by a crash mid-write.
    return None


def _truncate_after(path: str, step: int, redo_test: bool,
                    splits: tuple[str, ...]) -> None:
  """Drops lines of `splits` logged after `step` by a run that died before its next
  checkpoint."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    records = [(l, _parse(l)) for l in f if l.strip()]
  lines = [l for l, r in records if r is not None and (
      r['split'] not in splits or r['step'] < step or
      (r['step'] == step and not (redo_test and r['split'] == 'test')))]
  workdir_lib.write_text(path, ''.join(lines))


def progress_line(step: int, total: int, values: Mapping[str, float],
                  images_per_s: float, eta_s: float, extra: tuple[str, ...] = ()) -> str:
  """'step 120/2000 (6%) loss 1.2340 acc 0.567 lr 0.1 | 312 img/s | ETA 0:05:12', then
  ' | name value' for each name of `extra` in `values`."""
  return (f'step {step}/{total} ({100 * step / total:.0f}%) '
          f'loss {values["loss"]:.4f} acc {values["accuracy"]:.3f} '
          f'lr {values["learning_rate"]:.4g} | {images_per_s:.0f} img/s | '
          f'ETA {datetime.timedelta(seconds=round(eta_s))}' +
          ''.join(f' | {k} {values[k]:.3f}' for k in extra if k in values))
