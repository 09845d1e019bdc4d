"""Segmentation end to end: a tiny dense U-Net, then C2S2 with the cost check on mIoU."""

import csv
import json
import os
import subprocess
import sys

import pytest

from c2s2 import selection
from configs import quickstart_seg
from tests.test_main import ROOT
from tests.train.test_loop import tiny_config
from train import c2s2_setup, dispatch, loop
from train import workdir as workdir_lib

TINY = {'data.image_size': 8, 'data.canvases_train': 96, 'data.held_out': 32,
        'data.canvases_test': 16, 'batch_size': 16, 'eval_batch_size': 16,
        'num_train_steps': 8, 'log_every_steps': 4, 'checkpoint_every_steps': 8}


def seg_config(variant='dense', **overrides):
  config = quickstart_seg.get_config(variant)
  for key, value in {**TINY, **overrides}.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config


@pytest.fixture(scope='module')
def dense(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('seg_dense'))
  return workdir, dispatch.train_and_evaluate(seg_config(), workdir)


def test_summary_and_eval_report_miou_and_per_class_iou(dense):
  workdir, summary = dense
  assert 0.0 <= summary['miou'] <= 1.0 and 'iou/background' in summary
  ious = [v for k, v in summary.items() if k.startswith('iou/')]
  assert summary['miou'] == pytest.approx(sum(ious) / len(ious))
  result = loop.evaluate_checkpoint(seg_config(), workdir)
  with open(os.path.join(workdir, workdir_lib.EVAL_FILE)) as f:
    written = json.load(f)
  assert written['miou'] == pytest.approx(summary['miou']) == result['miou']
  assert written['iou/background'] == pytest.approx(summary['iou/background'])


def test_c2s2_cost_check_protects_held_out_miou(dense, tmp_path):
  config = seg_config(
      'c2s2', init_from=dense[0], num_train_steps=4, **{
          'channel_pruning.layers_per_step': 12, 'channel_pruning.phase1_epochs': 0.25,
          'channel_pruning.phase2_epochs': 0.25, 'channel_pruning.lambda_l1': 2.0,
          'channel_pruning.epsilon': 0.0, 'channel_pruning.max_retries': 0,
          'channel_pruning.latency_batch': 4})
  summary = dispatch.train_and_evaluate(config, str(tmp_path))
  log = workdir_lib.read_jsonl(os.path.join(tmp_path, workdir_lib.DECISIONS_FILE))
  assert [d['unit'] for d in log] == [0]  # One unit of the 12 groups, no retry.
  within = selection.within_budget(log[0]['reference'], log[0]['cost'], 0.0, 'miou')
  final = log[0]['action']
  assert final == ('accept' if within else 'give_up'), log[0]
  channels = summary['channels']
  if final == 'accept':
    assert sum(v['kept'] for v in channels.values()) < sum(
        v['original'] for v in channels.values())
    assert summary['macs'] < summary['macs_original']
  else:  # The unit as it started: every channel.
    assert all(v['kept'] == v['original'] for v in channels.values())
  assert 'miou' in summary and 'up1' in channels


def test_miou_cost_check_needs_segmentation_data(tmp_path):
  config = tiny_config()
  config.channel_pruning.method = 'c2s2'
  config.init_from = str(tmp_path)
  config.channel_pruning.cost_metric = 'miou'
  with pytest.raises(ValueError, match="cost_metric='miou' needs segmentation data"):
    c2s2_setup.make_setup(config)
  config.channel_pruning.cost_metric = 'iou'
  with pytest.raises(ValueError, match=r"cost_metric='iou'; choose one of \('top1', 'miou'\)"):
    c2s2_setup.make_setup(config)


TINY_TABLE = '''
import dataclasses
from configs.tables import segmentation_digits
TINY = {tiny!r}

def get_table(preset):
  table = segmentation_digits.get_table(preset)
  rows = tuple(dataclasses.replace(r, overrides={{**r.overrides, **TINY}}) for r in table.rows)
  return dataclasses.replace(table, name='tiny_seg', rows=rows)
'''


@pytest.mark.slow
def test_the_segmentation_table_runs_at_tiny_size(tmp_path):
  tiny = {**TINY, 'channel_pruning.phase1_epochs': 0.25, 'channel_pruning.phase2_epochs': 0.25,
          'channel_pruning.layers_per_step': 12, 'channel_pruning.max_retries': 0,
          'channel_pruning.latency_batch': 4}
  (tmp_path / 'tiny_seg.py').write_text(TINY_TABLE.format(tiny=tiny))
  subprocess.run([sys.executable, '-m', 'train.reproduce', f'--table={tmp_path / "tiny_seg.py"}',
                  f'--root={tmp_path / "runs"}', f'--results={tmp_path / "results"}',
                  '--latency_batch=4'], cwd=ROOT, check=True, capture_output=True)
  with open(tmp_path / 'results' / 'tiny_seg.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['row'] for r in rows] == ['seg_dense', 'seg_l1_filter', 'seg_c2s2', 'seg_cci']
  assert all(0.0 <= float(r['mIoU']) <= 1.0 and float(r['MACs (M)']) > 0 for r in rows)
  assert float(rows[1]['MACs (M)']) < float(rows[0]['MACs (M)'])  # L1 filter removed some.
  assert rows[2]['cost check: units accepted / retried / given up'] in ('1 / 0 / 0',
                                                                        '0 / 0 / 1')
