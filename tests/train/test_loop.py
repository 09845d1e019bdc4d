"""The training loop end to end on the embedded digits: learning, resume, failures."""

import json
import os

import jax
import numpy as np
import pytest

from configs import quickstart
from train import checkpoints, data, dispatch, experiment, loop, models, steps
from train.checkpoints import Checkpointer, abstract_like


def tiny_config(**overrides):
  config = quickstart.get_config()
  config.data.image_size = 8
  config.batch_size = 16
  config.eval_batch_size = 100
  config.num_train_steps = 12
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  for key, value in overrides.items():
    config[key] = value
  return config


def final_state(config, workdir):
  exp = experiment.build(config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), 3, read_only=True)
  state = experiment.init_state(exp)
  state, _ = ckpt.restore(ckpt.latest_step(),
                          abstract_like(state, steps.replicated(exp.mesh)))
  ckpt.close()
  return state


def test_train_step_lowers_the_loss_on_a_fixed_batch(tmp_path):
  config = tiny_config()
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_epochs = 0.0
  exp = experiment.build(config, str(tmp_path))
  state = experiment.init_state(exp)
  step = steps.make_train_step(exp.model, exp.method, exp.schedule, exp.dataset.mean,
                               exp.dataset.std, exp.mesh)
  batch = next(data.train_batches(exp.dataset.train, batch_size=16, seed=0,
                                  start_step=0, crop_padding=0, flip=False))
  losses = []
  for _ in range(15):
    state, metrics = step(state, steps.to_global(batch, exp.mesh))
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses


def test_vgg_steps_on_the_trainer_mesh(tmp_path):
  """VGG's reshape max pool traces under the trainer's mesh (its axes are Auto)."""
  config = tiny_config(batch_size=4)
  config.model.name = 'vgg16'
  config.data.image_size = 32
  config.model.widths = json.dumps({key: 4 for key in models.default_widths('vgg16')})
  exp = experiment.build(config, str(tmp_path))
  step = steps.make_train_step(exp.model, exp.method, exp.schedule, exp.dataset.mean,
                               exp.dataset.std, exp.mesh)
  batch = next(data.train_batches(exp.dataset.train, batch_size=4, seed=0,
                                  start_step=0, crop_padding=0, flip=False))
  state, metrics = step(experiment.init_state(exp), steps.to_global(batch, exp.mesh))
  assert np.isfinite(float(metrics['loss'])) and int(state.step) == 1


def test_interrupted_run_resumes_to_identical_parameters(tmp_path):
  config = tiny_config()
  straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
  dispatch.train_and_evaluate(config, straight)
  assert dispatch.train_and_evaluate(config, interrupted, stop_at_step=10) == {}
  assert Checkpointer(os.path.join(interrupted, 'checkpoints'), 3,
                      read_only=True).latest_step() == 8
  summary = dispatch.train_and_evaluate(config, interrupted)
  a, b = final_state(config, straight), final_state(config, interrupted)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  logged = [json.loads(l)['step'] for l in open(os.path.join(interrupted, 'metrics.jsonl'))]
  assert logged == sorted(logged), 'steps after the checkpoint were logged twice'
  assert summary['steps'] == 12


def test_summary_and_eval_mode(tmp_path):
  workdir = str(tmp_path)
  summary = dispatch.train_and_evaluate(tiny_config(), workdir)
  for key in ('top1', 'loss', 'params', 'params_dense', 'macs', 'macs_dense',
              'wall_time_s', 'steps', 'train_images_per_s'):
    assert key in summary, key
  assert 0.0 <= summary['top1'] <= 1.0
  assert summary['params'] == summary['params_dense'] > 0
  on_disk = json.load(open(os.path.join(workdir, 'summary.json')))
  assert on_disk['top1'] == summary['top1']
  result = loop.evaluate_checkpoint(tiny_config(), workdir)
  assert result['top1'] == pytest.approx(summary['top1'])
  assert json.load(open(os.path.join(workdir, 'eval.json')))['step'] == 12
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


def test_non_finite_loss_stops_and_names_the_step(tmp_path):
  config = tiny_config()
  config.optimizer.learning_rate = 1e30
  with pytest.raises(checkpoints.NonFiniteError, match=r'at step \d+.*checkpoint'):
    dispatch.train_and_evaluate(config, str(tmp_path / 'stop'))
  config.on_nonfinite = 'skip'
  summary = dispatch.train_and_evaluate(config, str(tmp_path / 'skip'))
  assert summary['nonfinite_steps_skipped'] > 0


def test_bad_values_fail_before_training_and_name_the_key(tmp_path):
  config = tiny_config()
  config.data.source = 'ftp'
  with pytest.raises(ValueError, match='data.source'):
    dispatch.train_and_evaluate(config, str(tmp_path))
  config = tiny_config()
  config.data.source = 'folder'
  config.data.path = str(tmp_path / 'no_such.tar.gz')
  with pytest.raises(FileNotFoundError, match='data.path'):
    dispatch.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')
