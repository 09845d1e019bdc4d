"""Bad input the other test modules do not cover: each fails naming the culprit.

Covered elsewhere: unknown config keys (tests/test_main.py), impossible CCI settings
(test_cci_training.py, tests/cci/test_masks.py), C2S2 targets and budgets
(test_c2s2_driver.py), missing, truncated, undecodable and mislaid data
(test_data.py), another experiment's workdir (test_workdir.py).
"""

import os
import shutil

import jax
import jax.numpy as jnp
import pytest

from configs import cci_schedules
from tests.train.test_loop import tiny_config
from train import checkpoints, dispatch, models


def oneshot_from(workdir, **model):
  config = tiny_config()
  cci_schedules.apply(config, 'oneshot', workdir)
  for key, value in model.items():
    config.model[key] = value
  return config


@pytest.mark.parametrize('model, message', [
    ({'name': 'resnet14'},
     r"\['stage1_block1'\].* is missing from the checkpoint .*another model"),
    ({'widths': '{"stage1_block0/conv1": 8}'},
     (r"\['stage1_block0'\]\['bn1'\].* has shape \(16,\) in the checkpoint .*"
      r"has shape \(8,\) in this model")),
], ids=('other_model', 'other_widths'))
def test_init_from_another_model_or_widths_names_the_variable(tiny_dense_workdir,
                                                              tmp_path, model, message):
  with pytest.raises(ValueError, match=message):
    dispatch.train_and_evaluate(oneshot_from(tiny_dense_workdir, **model), str(tmp_path))
  written = tmp_path / 'checkpoints'
  assert not written.exists() or not os.listdir(written)


def test_init_from_a_deeper_model_is_refused(tmp_path):
  """A ResNet-14 holds every variable of a ResNet-8 with the same shapes: refused."""
  deeper = models.build_model('resnet14', 10)
  variables = deeper.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  ckpt = checkpoints.Checkpointer(str(tmp_path / 'resnet14' / 'checkpoints'), 1)
  ckpt.save(1, dict(variables), {})
  ckpt.wait()
  ckpt.close()
  with pytest.raises(ValueError, match=r'holds \d+ variable\(s\) this model lacks, e\.g\. '
                     r"\['batch_stats'\]\['stage1_block1'\]"):
    dispatch.train_and_evaluate(oneshot_from(str(tmp_path / 'resnet14')),
                            str(tmp_path / 'run'))


def snapshot(directory):
  """Every file under `directory` with its bytes."""
  return {os.path.join(d, n): open(os.path.join(d, n), 'rb').read()
          for d, _, names in os.walk(directory) for n in names}


def test_rerun_with_another_config_is_refused_and_loses_nothing(tiny_dense_workdir,
                                                                tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_dense_workdir, workdir)
  before = snapshot(workdir)
  config = tiny_config(num_train_steps=80)
  config.optimizer.learning_rate = 0.5
  with pytest.raises(ValueError, match=r'checkpoints of another experiment .*'
                     r'optimizer.learning_rate.*--overwrite'):
    dispatch.train_and_evaluate(config, workdir)
  os.remove(os.path.join(workdir, 'config.json'))  # Whose checkpoints are these?
  with pytest.raises(ValueError, match='checkpoints but no config.json.*--overwrite'):
    dispatch.train_and_evaluate(tiny_config(num_train_steps=80), workdir)
  del before[os.path.join(workdir, 'config.json')]
  assert snapshot(workdir) == before
