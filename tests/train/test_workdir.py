"""The workdir guard and JSON helpers."""

import errno
import os

import pytest

from configs import base
from train import errors, saved_config
from train import workdir as workdir_lib


def test_config_differences_ignore_run_control_keys():
  a = base.get_base_config()
  b = base.get_base_config()
  b.log_every_steps = 7
  b.data.cache_dir = '/elsewhere'
  assert saved_config.config_differences(a.to_dict(), b.to_dict()) == []
  b.optimizer.learning_rate = 0.5
  assert saved_config.config_differences(a.to_dict(), b.to_dict()) == [
      'optimizer.learning_rate']


def test_workdir_of_another_experiment_is_refused(tmp_path):
  workdir = str(tmp_path)
  config = base.get_base_config()
  saved_config.prepare(workdir, config, overwrite=False)
  os.makedirs(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR, '10'))
  with open(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR, '10', 'state'), 'w') as f:
    f.write('a checkpoint')
  other = base.get_base_config()
  other.model.name = 'resnet56'
  with pytest.raises(ValueError, match='model.name.*--overwrite'):
    saved_config.prepare(workdir, other, overwrite=False)
  saved_config.prepare(workdir, other, overwrite=True)
  assert not os.path.exists(os.path.join(workdir, workdir_lib.CHECKPOINT_DIR))
  assert saved_config.load_config(workdir).model.name == 'resnet56'


def test_empty_checkpoint_dirs_of_a_failed_start_do_not_count(tmp_path):
  workdir = str(tmp_path)
  saved_config.prepare(workdir, base.get_base_config(), overwrite=False)
  os.makedirs(os.path.join(workdir, workdir_lib.SELECTION_DIR, 'checkpoints'))
  other = base.get_base_config()
  other.init_from = '/corrected/path'
  saved_config.prepare(workdir, other, overwrite=False)
  assert saved_config.load_config(workdir).init_from == '/corrected/path'


def test_load_config_of_a_non_workdir_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    saved_config.load_config(str(tmp_path))


def test_keys_added_to_the_project_later_count_as_their_defaults():
  from configs import base
  from train import workdir as workdir_lib
  new = base.get_base_config().to_dict()
  old = base.get_base_config().to_dict()
  del old['sparsity']['pattern']  # Saved before the key existed.
  assert saved_config.config_differences(old, new) == []
  old['sparsity']['keep'] = 3
  assert saved_config.config_differences(old, new) == ['sparsity.keep']


def test_creating_command_is_read_from_the_config_docstrings():
  assert saved_config.creating_command('/tmp/quickstart') == (
      'python main.py --config=configs/quickstart.py --workdir=/tmp/quickstart')
  # A command continued over two lines, with an override.
  assert saved_config.creating_command('runs/resnet20_cpu_heldout/') == (
      'python main.py --config=configs/resnet20_cpu.py --config.data.held_out=5000 '
      '--workdir=runs/resnet20_cpu_heldout')
  assert saved_config.creating_command('/elsewhere') == (
      'python main.py --config=<the config that trains it> --workdir=/elsewhere')


def test_a_damaged_record_is_moved_aside_and_read_as_missing(tmp_path):
  path = tmp_path / 'summary.json'
  assert workdir_lib.read_record(str(path)) is None
  workdir_lib.write_json(str(path), {'top1': 0.5})
  assert workdir_lib.read_record(str(path)) == {'top1': 0.5}
  path.write_bytes(b'{"top1": \xff')
  assert workdir_lib.read_record(str(path)) is None
  assert not path.exists()
  assert (tmp_path / 'damaged' / 'summary.json').read_bytes() == b'{"top1": \xff'


def half_written_then_full(f):
  f.write('{"top1": 0.')
  f.flush()
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize('how', ['test_hook', 'mid_write'])
def test_a_full_disk_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch, how):
  path = tmp_path / 'summary.json'
  workdir_lib.write_json(str(path), {'top1': 0.5})
  with pytest.raises(errors.DiskFullError, match=f'writing {path};'):
    if how == 'test_hook':
      monkeypatch.setenv(errors.FULL_DISK_ENV, str(path))
      workdir_lib.write_json(str(path), {'top1': 0.9})
    else:  # Every atomic write goes through write_atomically.
      workdir_lib.write_atomically(str(path), half_written_then_full)
  assert workdir_lib.read_json(str(path)) == {'top1': 0.5}
  assert os.listdir(tmp_path) == ['summary.json']  # No half-written temporary file.
