"""C2S2 end to end on the embedded digits: selection, surgery, fine-tune, eval, checks."""

import json
import os

import jax
import numpy as np
import pytest

from configs import c2s2_schedules
from tests.train.test_loop import tiny_config
from train import c2s2_driver, loop
from train import workdir as workdir_lib


@pytest.fixture(scope='module')
def dense_workdir(tiny_dense_workdir):
  return tiny_dense_workdir


def c2s2_config(dense_workdir, **channel_pruning):
  config = tiny_config()
  c2s2_schedules.apply(config, dense_workdir)
  cp = config.channel_pruning
  cp.phase1_epochs = 0.1  # 7 steps of 16 on the 1,137 training digits left.
  cp.phase2_epochs = 0.05
  cp.lambda_l1 = 2.0
  cp.epsilon = 1.0
  cp.latency_batch = 8
  for key, value in channel_pruning.items():
    cp[key] = value
  return config


@pytest.fixture(scope='module')
def finished(dense_workdir, tmp_path_factory):
  """A whole C2S2 run: its workdir and summary."""
  workdir = str(tmp_path_factory.mktemp('c2s2'))
  return workdir, loop.train_and_evaluate(c2s2_config(dense_workdir), workdir)


def decisions(workdir):
  with open(os.path.join(workdir, c2s2_driver.DECISIONS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_c2s2_prunes_fine_tunes_and_evaluates_from_the_workdir(dense_workdir, finished):
  workdir, summary = finished
  log = decisions(workdir)
  assert [d['unit'] for d in log] == [0, 1, 2]  # resnet8: one conv1 per stage.
  assert all(d['action'] == 'accept' for d in log)
  channels = summary['channels']
  pruned = [k for k, v in channels.items() if v['kept'] < v['original']]
  assert pruned and all(k.endswith('/conv1') for k in pruned), channels
  assert all(v['kept'] >= 2 for v in channels.values())
  assert summary['macs'] < summary['macs_original']
  assert summary['params'] < summary['params_original']
  assert summary['latency_ms_compact'] > 0 and summary['latency_speedup'] > 0
  with open(os.path.join(workdir, 'widths.json')) as f:
    assert {k: v['kept'] for k, v in channels.items()} == json.load(f)
  # The compact checkpoint evaluates from its workdir alone.
  result = loop.evaluate_checkpoint(workdir_lib.load_config(workdir), workdir)
  assert result['top1'] == pytest.approx(summary['top1'])
  # A finished run is not redone.
  assert loop.train_and_evaluate(c2s2_config(dense_workdir), workdir)['top1'] == \
      pytest.approx(summary['top1'])


def test_cost_check_restores_channels_of_a_harmful_prune(dense_workdir, tmp_path):
  workdir = str(tmp_path / 'harmful')
  config = c2s2_config(dense_workdir, lambda_l1=20.0, epsilon=0.0, max_retries=2,
                       train_weights_in_phase1=False, include='stage1')
  loop.train_and_evaluate(config, workdir)
  log = decisions(workdir)
  assert log[0]['action'] == 'restore', log
  kept = [d['layers']['stage1_block0/conv1']['kept'] for d in log]
  assert kept[0] == 2  # lambda zeroed every scale; min_channels kept.
  assert kept == sorted(kept) and kept[-1] > kept[0]
  assert log[-1]['action'] in ('accept', 'give_up')


def test_halve_lambda_redoes_phase_one(dense_workdir, tmp_path):
  workdir = str(tmp_path / 'halve')
  config = c2s2_config(dense_workdir, lambda_l1=20.0, epsilon=0.0, max_retries=1,
                       on_over_budget='halve_lambda', include='stage1')
  loop.train_and_evaluate(config, workdir)
  log = decisions(workdir)
  lambdas = [d['layers']['stage1_block0/conv1']['lambda'] for d in log]
  assert log[0]['action'] == 'halve_lambda' and lambdas[:2] == [20.0, 10.0]


@pytest.mark.parametrize('key,value,message', [
    ('target_macs_ratio', 0.01, 'target_macs_ratio'),
    ('epsilon', -0.01, 'epsilon must be >= 0'),
    ('prune_residual_stream', True, 'prune_residual_stream'),
    ('include', 'nothing', 'include'),
])
def test_impossible_settings_fail_before_training(dense_workdir, tmp_path, key, value,
                                                  message):
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(c2s2_config(dense_workdir, **{key: value}), str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'selection'))


@pytest.mark.parametrize('held_out,message', [(5000, 'cannot hold out'), (0, '> 0')])
def test_held_out_split_must_exist(dense_workdir, tmp_path, held_out, message):
  config = c2s2_config(dense_workdir)
  config.data.held_out = held_out
  with pytest.raises(ValueError, match=f'data.held_out.*{message}'):
    loop.train_and_evaluate(config, str(tmp_path))


def test_c2s2_needs_a_pretrained_model(tmp_path):
  config = c2s2_config('')
  config.init_from = ''
  with pytest.raises(ValueError, match='init_from'):
    loop.train_and_evaluate(config, str(tmp_path))


def test_selection_resumes_inside_a_phase_to_identical_results(dense_workdir, finished,
                                                               tmp_path):
  straight, interrupted = finished[0], str(tmp_path / 'interrupted')
  config = c2s2_config(dense_workdir)
  # Unit 1's phase 1 runs from step 11 to 18; the last checkpoint before 17 is at 16.
  assert loop.train_and_evaluate(config, interrupted, stop_at_step=17) == {}
  summary = loop.train_and_evaluate(config, interrupted)
  assert decisions(interrupted) == decisions(straight)
  a = loop.restore_latest(workdir_lib.load_config(straight), straight)[1]
  b = loop.restore_latest(workdir_lib.load_config(interrupted), interrupted)[1]
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  with open(os.path.join(straight, 'summary.json')) as f:
    assert json.load(f)['top1'] == summary['top1']
