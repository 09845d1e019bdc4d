"""The workdir guard and JSON helpers."""

import os

import pytest

from configs import base
from train import workdir as workdir_lib


def test_config_differences_ignore_run_control_keys():
  a = base.get_base_config()
  b = base.get_base_config()
  b.log_every_steps = 7
  b.data.cache_dir = '/elsewhere'
  assert workdir_lib.config_differences(a.to_dict(), b.to_dict()) == []
  b.optimizer.learning_rate = 0.5
  assert workdir_lib.config_differences(a.to_dict(), b.to_dict()) == [
      'optimizer.learning_rate']


def test_workdir_of_another_experiment_is_refused(tmp_path):
  workdir = str(tmp_path)
  config = base.get_base_config()
  workdir_lib.prepare(workdir, config, overwrite=False)
  os.makedirs(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR, '10'))
  with open(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR, '10', 'state'), 'w') as f:
    f.write('a checkpoint')
  other = base.get_base_config()
  other.model.name = 'resnet56'
  with pytest.raises(ValueError, match='model.name.*--overwrite'):
    workdir_lib.prepare(workdir, other, overwrite=False)
  workdir_lib.prepare(workdir, other, overwrite=True)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))
  assert workdir_lib.load_config(workdir).model.name == 'resnet56'


def test_empty_checkpoint_dirs_of_a_failed_start_do_not_count(tmp_path):
  workdir = str(tmp_path)
  workdir_lib.prepare(workdir, base.get_base_config(), overwrite=False)
  os.makedirs(os.path.join(workdir, workdir_lib.SELECTION_DIR, 'checkpoints'))
  other = base.get_base_config()
  other.init_from = '/corrected/path'
  workdir_lib.prepare(workdir, other, overwrite=False)
  assert workdir_lib.load_config(workdir).init_from == '/corrected/path'


def test_load_config_of_a_non_workdir_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    workdir_lib.load_config(str(tmp_path))


def test_keys_added_to_the_project_later_count_as_their_defaults():
  from configs import base
  from train import workdir as workdir_lib
  new = base.get_base_config().to_dict()
  old = base.get_base_config().to_dict()
  del old['sparsity']['pattern']  # Saved before the key existed.
  assert workdir_lib.config_differences(old, new) == []
  old['sparsity']['keep'] = 3
  assert workdir_lib.config_differences(old, new) == ['sparsity.keep']
