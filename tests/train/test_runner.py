"""The one inner loop: when it logs, evaluates, checks for non-finite steps and saves."""

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpoints, metrics, runner, steps
from train import workdir as workdir_lib


@flax.struct.dataclass
class CountingState:
  step: jax.Array
  first_nonfinite_step: jax.Array
  nonfinite_steps: jax.Array


def counting_state(bad_step=-1):
  return CountingState(jnp.zeros((), jnp.int32), jnp.asarray(bad_step, jnp.int32),
                       jnp.asarray(int(bad_step >= 0), jnp.int32))


def step_fn(state, batch):
  """Loss = the step's number, so each logged mean says which steps it covers."""
  del batch
  step = state.step + 1
  return state.replace(step=step), {'loss': step.astype(jnp.float32),
                                    'accuracy': jnp.float32(0.5),
                                    'learning_rate': jnp.float32(0.1)}


def batches():
  while True:
    yield {'image': np.zeros((2, 1), np.float32)}


class RecordingCheckpointer:
  """Remembers the steps saved and their records (the real one is tested elsewhere)."""

  directory = '/nowhere'

  def __init__(self):
    self.saved = []

  def save(self, step, state, meta):
    assert int(state.step) == step
    self.saved.append((step, meta))

  def wait(self):
    pass

  def latest_step(self):
    return self.saved[-1][0] if self.saved else None

  def path(self, step):
    return f'{self.directory}/{step}'


def run(tmp_path, *, start=0, end=10, stop_at=None, save_at_end=True, state=None,
        evaluate=None, on_nonfinite='stop', log_every=4):
  writer = metrics.MetricWriter(str(tmp_path), start)
  ckpt = RecordingCheckpointer()
  report = runner.Reporting(
      checkpointer=ckpt, writer=writer, meta=lambda: {'note': 'meta'}, batch_size=2,
      log_every=log_every, checkpoint_every=6, on_nonfinite=on_nonfinite, total=end,
      evaluate=evaluate, eval_every=5 if evaluate else 0)
  try:
    state, reached = runner.run_steps(
        state or counting_state(), step_fn, batches(), start, end, steps.make_mesh(),
        report, save_at_end=save_at_end, stop_at=stop_at)
  finally:
    writer.close()
  lines = workdir_lib.read_jsonl(os.path.join(tmp_path, workdir_lib.METRICS_FILE))
  return state, reached, ckpt.saved, lines, report.clock


def test_logs_at_log_and_checkpoint_steps_and_saves_at_checkpoints_and_end(tmp_path):
  state, reached, saved, lines, clock = run(tmp_path)
  assert reached and int(state.step) == 10
  assert [s for s, _ in saved] == [6, 10] and saved[0][1] == {'note': 'meta'}
  # Step 1 compiles and is not timed, but its metrics count: each line is the mean
  # loss of all its steps.
  assert [(l['step'], l['loss']) for l in lines] == [(4, 2.5), (6, 5.5), (8, 7.5),
                                                     (10, 9.5)]
  assert all(l['split'] == 'train' and l['images_per_s'] > 0 for l in lines)
  assert clock.train_images == 9 * 2


def test_the_untimed_compile_step_logs_with_the_next_step(tmp_path):
  *_, lines, clock = run(tmp_path, log_every=1, end=4)
  assert [(l['step'], l['loss']) for l in lines] == [(2, 1.5), (3, 3.0), (4, 4.0)]
  assert clock.train_images == 3 * 2


def test_a_stretch_whose_end_the_caller_saves_stops_short_when_interrupted(tmp_path):
  _, reached, saved, _, _ = run(tmp_path, save_at_end=False, end=12)
  assert reached and [s for s, _ in saved] == [6]  # Not 12: the caller saves it.
  state, reached, saved, lines, _ = run(tmp_path / 'stopped', stop_at=7)
  assert not reached and int(state.step) == 7
  assert [s for s, _ in saved] == [6] and [l['step'] for l in lines] == [4, 6]


def test_resumed_stretch_counts_from_its_start(tmp_path):
  state = counting_state().replace(step=jnp.asarray(6, jnp.int32))
  state, reached, saved, lines, _ = run(tmp_path, start=6, state=state)
  assert reached and [s for s, _ in saved] == [10]
  assert [(l['step'], l['loss']) for l in lines] == [(8, 7.5), (10, 9.5)]


def test_evaluates_every_eval_steps_before_the_end(tmp_path):
  seen = []

  def evaluate(state):
    seen.append(int(state.step))
    return {'top1': 0.25, 'loss': 1.5}

  *_, lines, _ = run(tmp_path, evaluate=evaluate)
  assert seen == [5]
  assert [l for l in lines if l['split'] == 'test'] == [
      {'step': 5, 'split': 'test', 'top1': 0.25, 'loss': 1.5}]


def test_a_non_finite_step_stops_at_the_next_log_unless_skipped(tmp_path):
  with pytest.raises(checkpoints.NonFiniteError, match='at step 3'):
    run(tmp_path / 'stop', state=counting_state(bad_step=3))
  state, reached, *_ = run(tmp_path / 'skip', state=counting_state(bad_step=3),
                           on_nonfinite='skip')
  assert reached and int(state.step) == 10


def test_each_writer_drops_only_its_own_splits_on_resume(tmp_path):
  path = os.path.join(tmp_path, workdir_lib.METRICS_FILE)
  records = [{'step': s, 'split': split, 'loss': 1.0}
             for split in ('selection', 'held_out', 'train', 'test') for s in (5, 50)]
  with open(path, 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in records) + '{"torn": \n')
  metrics.MetricWriter(str(tmp_path), 10).close()  # Training resumes at step 10.
  kept = [(r['split'], r['step']) for r in workdir_lib.read_jsonl(path)]
  assert kept == [('selection', 5), ('selection', 50), ('held_out', 5), ('held_out', 50),
                  ('train', 5), ('test', 5)]
  metrics.MetricWriter(str(tmp_path), -1, splits=metrics.SELECTION_SPLITS).close()
  assert [(r['split'], r['step']) for r in workdir_lib.read_jsonl(path)] == [
      ('train', 5), ('test', 5)]  # Selection starts again: its lines go.
