"""Schedules and step counts, checked against hand-computed values."""

import hypothesis
from hypothesis import strategies as st
import ml_collections
import numpy as np
import pytest

from configs import base
from train import optim


def _opt(**overrides) -> ml_collections.ConfigDict:
  opt = base.get_base_config().optimizer
  opt.update(overrides)
  return opt


def test_step_schedule_drops_at_fractions():
  schedule = optim.make_schedule(_opt(learning_rate=0.1), 100, 10)
  assert [float(schedule(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_warmup_then_cosine():
  schedule = optim.make_schedule(
      _opt(learning_rate=0.2, schedule='cosine', warmup_epochs=1.0), 110, 10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.1)
  assert float(schedule(10)) == pytest.approx(0.2)
  assert float(schedule(60)) == pytest.approx(0.1, abs=1e-6)  # Half-way down.
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


@hypothesis.given(total=st.integers(2, 5000), lr=st.floats(1e-3, 1.0),
                  warmup=st.floats(0.0, 2.0))
@hypothesis.settings(deadline=None, max_examples=30)
def test_cosine_schedule_is_bounded_and_decreasing_after_warmup(total, lr, warmup):
  per_epoch = 10
  schedule = optim.make_schedule(
      _opt(learning_rate=lr, schedule='cosine', warmup_epochs=warmup), total, per_epoch)
  start = min(round(warmup * per_epoch), total - 1)
  values = np.array([float(schedule(s)) for s in range(start, total, max(1, total // 50))])
  assert np.all(values <= lr * (1 + 1e-6)) and np.all(values >= 0)
  assert np.all(np.diff(values) <= 1e-7)


def test_unknown_schedule_names_the_key():
  with pytest.raises(ValueError, match='optimizer.schedule'):
    optim.make_schedule(_opt(schedule='linear'), 100, 10)


def test_num_train_steps_from_epochs_or_override():
  config = base.get_base_config()
  config.num_epochs = 2.5
  assert optim.num_train_steps(config, 10) == 25
  config.num_train_steps = 7
  assert optim.num_train_steps(config, 10) == 7
