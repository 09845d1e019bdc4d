"""Classification loss with label smoothing: hand-computed, a property, the key, a run."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.train.test_loop import tiny_config
from train import data, experiment, steps, tasks


def test_label_smoothing_of_a_hand_computed_case():
  # Two classes, logits [ln 3, 0]: p = (3/4, 1/4); label 0, smoothing 0.2 -> target
  # (0.9, 0.1).
  logits, labels = jnp.log(jnp.array([[3.0, 1.0]])), jnp.array([0])
  expected = -(0.9 * np.log(0.75) + 0.1 * np.log(0.25))
  assert tasks.Task(label_smoothing=0.2).loss(logits, labels) == pytest.approx(
      expected, rel=1e-6)
  # With class weights: a weighted mean of the smoothed losses.
  two = jnp.log(jnp.array([[3.0, 1.0], [1.0, 1.0]]))
  weighted = tasks.Task(class_weights=(0.5, 1.0), label_smoothing=0.2).loss(
      two, jnp.array([0, 1]))
  assert weighted == pytest.approx((0.5 * expected + np.log(2)) / 1.5, rel=1e-6)
  # Evaluation scores the plain labels: -ln(3/4).
  sums = tasks.Task(label_smoothing=0.2).eval_sums(logits, labels, jnp.ones(1))
  assert float(sums['loss_sum']) == pytest.approx(-np.log(0.75), rel=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 0.99), st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_label_smoothing_mixes_the_cross_entropy_with_the_mean_log_loss(alpha, k, seed):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(5, k)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, k, 5))
  log_p = np.asarray(jnp.log(jnp.exp(logits) / jnp.exp(logits).sum(-1, keepdims=True)))
  cross_entropy = -log_p[np.arange(5), np.asarray(labels)].mean()
  uniform = -log_p.mean()
  assert tasks.Task(label_smoothing=alpha).loss(logits, labels) == pytest.approx(
      (1 - alpha) * cross_entropy + alpha * uniform, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize('alpha', [-0.1, 1.0, 1.5])
def test_label_smoothing_outside_0_1_names_the_key(alpha):
  dataset = data.ImageDataset(None, None, ('a', 'b'), np.zeros(3), np.ones(3))
  with pytest.raises(ValueError, match=r'data\.label_smoothing'):
    tasks.task_for(dataset, (), alpha)


def test_a_run_with_label_smoothing_trains_on_the_smoothed_loss(tmp_path):
  config = tiny_config()
  config.data.label_smoothing = 0.3
  exp = experiment.build(config, str(tmp_path))
  assert exp.task == tasks.Task(label_smoothing=0.3)
  state = experiment.init_state(exp)
  step = steps.make_train_step(exp.model, exp.method, exp.schedule, exp.dataset.mean,
                               exp.dataset.std, exp.mesh, exp.task)
  batch = next(data.train_batches(exp.dataset.train, batch_size=16, seed=0,
                                  start_step=0, crop_padding=0, flip=False))
  images = steps.normalize(batch['image'], exp.dataset.mean, exp.dataset.std,
                           exp.model.dtype)
  logits = exp.model.apply(state.variables, images, train=True,
                           mutable=['batch_stats'])[0]
  _, metrics = step(state, steps.to_global(batch, exp.mesh))  # Donates `state`.
  assert float(metrics['loss']) == pytest.approx(
      float(exp.task.loss(logits, batch['label'])), rel=1e-4)
  assert float(metrics['loss']) != pytest.approx(
      float(tasks.CLASSIFICATION.loss(logits, batch['label'])), rel=1e-3)
