"""Checkpoints: damaged ones detected, moved aside and skipped; a mismatch is not damage."""

import errno
import gc
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpoints, errors, integrity
from train.checkpoints import Checkpointer


def tree(value: float, size: int = 3) -> dict:
  return {'params': {'w': jnp.full((size,), value)}, 'step': jnp.asarray(int(value))}


def abstract(size: int = 3) -> dict:
  return jax.eval_shape(lambda: tree(0.0, size))


def saved(directory, steps=(1, 2, 3)) -> Checkpointer:
  ckpt = Checkpointer(str(directory), keep=5)
  for step in steps:
    ckpt.save(step, tree(float(step)), {'note': step})
  ckpt.wait()
  return ckpt


def rewrite_meta(directory, step, edit) -> None:
  """Applies `edit` to the JSON record of checkpoint `step` on disk."""
  path = os.path.join(directory, str(step), 'meta', 'metadata')
  with open(path) as f:
    meta = json.load(f)
  edit(meta)
  with open(path, 'w') as f:
    json.dump(meta, f)


def test_checksums_name_every_array_by_path():
  sums = integrity.checksums(tree(1.0))
  assert set(sums) == {'params/w', 'step'}
  assert sums == integrity.checksums(jax.device_get(tree(1.0)))  # Device or host.
  assert sums['params/w'] != integrity.checksums(tree(2.0))['params/w']


def test_a_damaged_latest_is_moved_aside_and_the_previous_restored(tmp_path):
  ckpt = saved(tmp_path)
  rewrite_meta(tmp_path, 3, lambda m: m[checkpoints.CHECKSUMS_KEY].update({'params/w': 0}))
  step, state, meta = ckpt.restore_latest(lambda _: abstract())
  assert (step, meta) == (2, {'note': 2})
  np.testing.assert_array_equal(state['params']['w'], np.full(3, 2.0))
  assert sorted(os.listdir(tmp_path / 'damaged')) == ['3']
  assert ckpt.latest_step() == 2
  ckpt.save(3, tree(3.0), {'note': 3})  # The step is free again.
  ckpt.wait()
  assert ckpt.restore_latest(lambda _: abstract())[0] == 3
  ckpt.close()


def test_an_unreadable_record_counts_as_damage(tmp_path):
  ckpt = saved(tmp_path)
  with open(tmp_path / '3' / 'meta' / 'metadata', 'wb') as f:
    f.write(b'\xff\xfe not json')
  assert ckpt.restore_latest(lambda _: abstract())[0] == 2
  assert os.listdir(tmp_path / 'damaged') == ['3']
  ckpt.close()


def test_every_checkpoint_damaged_stops_naming_the_folder(tmp_path):
  ckpt = saved(tmp_path, steps=(1, 2))
  for step in (1, 2):
    rewrite_meta(tmp_path, step, lambda m: m[checkpoints.CHECKSUMS_KEY].update(step=0))
  with pytest.raises(errors.UserError, match=f'No intact checkpoint left in {tmp_path}'):
    ckpt.restore_latest(lambda _: abstract())
  assert sorted(os.listdir(tmp_path / 'damaged')) == ['1', '2']
  ckpt.close()


# Orbax leaves one coroutine of the failed read to be collected later.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_another_model_is_a_mismatch_not_damage(tmp_path):
  ckpt = saved(tmp_path)
  with pytest.raises(ValueError, match='does not match the configured model'):
    ckpt.restore_latest(lambda _: abstract(size=4))
  assert not (tmp_path / 'damaged').exists() and ckpt.latest_step() == 3
  ckpt.close()
  gc.collect()  # Here, where its warning is ignored.


def test_checkpoints_saved_without_checksums_are_taken_as_read(tmp_path):
  ckpt = saved(tmp_path)
  rewrite_meta(tmp_path, 3, lambda m: m.pop(checkpoints.CHECKSUMS_KEY))
  assert ckpt.restore_latest(lambda _: abstract())[:1] == (3,)
  ckpt.close()


def test_no_checkpoint_restores_nothing(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  assert ckpt.restore_latest(lambda _: abstract()) is None
  ckpt.close()


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous(tmp_path, monkeypatch):
  ckpt = saved(tmp_path, steps=(1,))
  ckpt.close()
  monkeypatch.setenv(errors.FULL_DISK_ENV, str(tmp_path / '2'))
  ckpt = Checkpointer(str(tmp_path), keep=5)
  with pytest.raises(errors.DiskFullError, match=f'writing {tmp_path / "2"};'):
    ckpt.save(2, tree(2.0), {})
    ckpt.wait()
  assert ckpt.latest_step() == 1 and not (tmp_path / '2').exists()


@pytest.mark.parametrize('error, full', [
    (OSError(errno.ENOSPC, 'No space left on device'), True),
    (ValueError('RESOURCE_EXHAUSTED: ... No space left on device'), True),
    (OSError(errno.EACCES, 'Permission denied'), False),
    (ValueError('other'), False)])
def test_is_disk_full_reads_the_cause_chain(error, full):
  try:
    try:
      raise error
    except Exception as inner:
      raise RuntimeError('wrapped') from inner
  except RuntimeError as outer:
    assert errors.is_disk_full(outer) == full


def test_saved_widths_are_read_from_the_kernels(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, {'params': {'stage1': {'conv1': {'kernel': jnp.zeros((3, 3, 2, 5))}}}}, {})
  ckpt.wait()
  ckpt.close()
  assert checkpoints.saved_widths(str(tmp_path), {'stage1/conv1': 8}) == {'stage1/conv1': 5}
  assert checkpoints.saved_widths(str(tmp_path), {'stage2/conv1': 8}) is None  # Another model.
  assert checkpoints.saved_widths(str(tmp_path / 'none'), {'stage1/conv1': 8}) is None
