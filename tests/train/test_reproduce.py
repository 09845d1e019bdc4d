"""The reproduction harness: tables load, and a tiny table runs end to end."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.test_main import ROOT
from train import provenance, reproduce, tables
from train import workdir as workdir_lib

ROW_LINE = r'\| %s( \(stale\))? \|'  # A dirty checkout's rows are stale.

TINY = {'data.image_size': 8, 'batch_size': 16, 'eval_batch_size': 100,
        'num_train_steps': 6, 'checkpoint_every_steps': 3, 'log_every_steps': 3}
TABLE = f'''
from train.tables import TOP1, Column, Row, Table, macs_reduction
TINY = {TINY!r}

def get_table(preset):
  return Table('tiny', 'tiny', 'Two rows and two that cannot finish.', (
      Row('dense', 'dense', 'dense', 'configs/quickstart.py', TINY),
      Row('l1', 'L1 filter', 'L1 filter', 'configs/quickstart.py',
          {{**TINY, 'channel_pruning.method': 'l1_filter',
            'channel_pruning.latency_batch': 4}}, start_from='dense'),
      Row('broken', 'broken', 'x', 'configs/quickstart.py',
          {{**TINY, 'model.name': 'resnet7'}}),
      Row('after_broken', 'after', 'x', 'configs/quickstart.py', TINY,
          start_from='broken'),
  ), (TOP1, Column('MACs reduction', macs_reduction)))
'''


@pytest.mark.parametrize('name, preset', [
    ('cifar10_cci', 'cpu'), ('cifar10_cci', 'paper'), ('cifar10_c2s2', 'cpu'),
    ('cifar10_c2s2', 'paper'), ('imagenet_cci', 'paper'), ('imagenet_c2s2', 'paper'),
    ('quickstart', 'cpu'), ('segmentation_digits', 'cpu'), ('segmentation_digits', 'paper')])
def test_every_row_of_the_shipped_tables_has_a_valid_config(name, preset):
  table = reproduce.load_table(name, preset)
  for row in table.rows:
    reproduce.row_config(row).lock()


def test_bad_tables_are_refused_by_name():
  with pytest.raises(ValueError, match='no such table'):
    reproduce.load_table('cifar11', 'cpu')
  with pytest.raises(ValueError, match='only the paper preset'):
    reproduce.load_table('imagenet_cci', 'cpu')
  row = tables.Row('r', 'r', 'm', 'configs/quickstart.py', {'optimizer.lr': 0.1})
  with pytest.raises(ValueError, match="Row r: .* no key 'optimizer.lr'"):
    reproduce.row_config(row)
  with pytest.raises(ValueError, match='starts from'):
    tables.Table('t', 't', '', (tables.Row('a', 'a', 'm', 'c', start_from='b'),), ())


def test_tiny_table_end_to_end_resumes_and_reports_failures(tmp_path):
  table = tmp_path / 'tiny.py'
  table.write_text(TABLE)
  args = [sys.executable, '-m', 'train.reproduce', f'--table={table}',
          f'--root={tmp_path / "runs"}', f'--results={tmp_path / "results"}',
          '--latency_batch=4']
  first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
  assert first.returncode != 0 and "['broken']" in first.stderr, first.stderr[-2000:]
  results = tmp_path / 'results'
  assert {p.name for p in results.iterdir()} == {'tiny.md', 'tiny.csv', 'tiny.json',
                                                 'tiny.png'}
  text = (results / 'tiny.md').read_text()
  assert re.search(ROW_LINE % 'dense', text) and re.search(ROW_LINE % 'L1 filter', text)
  assert 'broken (seed 0): failed' in text and 'resnet7' in text
  assert 'after_broken (seed 0): blocked: needs row broken' in text
  with open(results / 'tiny.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['row'] for r in rows] == ['dense', 'l1']
  assert float(rows[1]['MACs reduction']) > 1.0
  first_json = (results / 'tiny.json').read_text()
  record = json.loads(first_json)['rows'][1]
  assert record['config']['channel_pruning']['method'] == 'l1_filter'
  assert record['config']['init_from'].endswith(os.path.join('cpu', 'dense'))
  assert record['revision'] and record['hardware']['devices'] >= 1
  assert record['latency_ms'] > 0 and record['wall_time_s'] > 0 and record['seed'] == 0
  # Rerunning skips the finished rows: no new attempt is recorded for them.
  attempts = tmp_path / 'runs' / 'cpu' / 'dense' / workdir_lib.ATTEMPTS_FILE
  assert len(json.loads(attempts.read_text())) == 1
  second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
  assert second.returncode != 0 and "['broken']" in second.stderr  # Results written.
  assert len(json.loads(attempts.read_text())) == 1
  # Nothing ran, so the rows keep the latencies timed side by side the first time.
  again = json.loads((results / 'tiny.json').read_text())['rows']
  assert [r['latency_ms'] for r in again] == [
      r['latency_ms'] for r in json.loads(first_json)['rows']]
  # Without the workdirs, the recorded rows stand and nothing is rerun for them.
  shutil.rmtree(tmp_path / 'runs')
  third = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
  assert third.returncode != 0
  assert not (tmp_path / 'runs' / 'cpu' / 'dense').exists()
  text = (results / 'tiny.md').read_text()
  assert re.search(ROW_LINE % 'dense', text) and re.search(ROW_LINE % 'L1 filter', text)


def test_an_interrupted_attempt_still_counts_toward_the_wall_time(tmp_path, monkeypatch):
  workdir = tmp_path / 'row'
  workdir.mkdir()

  def stopped(*args, **kwargs):
    raise KeyboardInterrupt  # Ctrl-C; SIGTERM raises SystemExit the same way.

  monkeypatch.setattr(reproduce.subprocess, 'run', stopped)
  with pytest.raises(KeyboardInterrupt):
    reproduce.run_row(['main.py'], str(workdir), str(tmp_path / 'row.log'))
  attempts = json.loads((workdir / workdir_lib.ATTEMPTS_FILE).read_text())
  assert len(attempts) == 1 and attempts[0]['exit_code'] is None
  assert attempts[0]['seconds'] >= 0


def test_recorded_latencies_are_kept_only_when_every_row_is_the_recorded_run():
  recorded = {'row': 'a', 'seed': 0, 'summary': {'top1': 0.5}, 'latency_ms': 3.0,
              'latency_batch': 128}
  prior = {('a', 0): recorded}
  same = {'row': 'a', 'seed': 0, 'summary': {'top1': 0.5}}
  assert reproduce.latencies_current([same], prior, 128)
  assert not reproduce.latencies_current([same], prior, 64)  # Another batch.
  assert not reproduce.latencies_current([{**same, 'summary': {'top1': 0.6}}], prior,
                                         128)  # The row ran again.
  assert not reproduce.latencies_current([same, {**same, 'row': 'b'}], prior, 128)
  unmeasured = {k: v for k, v in recorded.items() if k != 'latency_ms'}
  assert not reproduce.latencies_current([same], {('a', 0): unmeasured}, 128)
  assert not reproduce.latencies_current([], prior, 128)


def _finish(workdir, revision):
  """Makes `workdir` a finished row made at `revision`."""
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.write_json(os.path.join(workdir, 'summary.json'),
                         {'revision': revision, 'wall_time_s': 1.0})


@pytest.mark.parametrize('rerun, runs', [
    ('none', []),
    ('stale', ['dense', 'l1']),  # l1 starts from dense, which ran again.
    ('all', ['dense', 'l1', 'other']),
])
def test_rerun_runs_stale_rows_and_their_dependents_once(tmp_path, monkeypatch, rerun,
                                                         runs):
  rows = (tables.Row('dense', 'dense', 'dense', 'configs/quickstart.py'),
          tables.Row('l1', 'L1', 'L1', 'configs/quickstart.py', start_from='dense'),
          tables.Row('other', 'other', 'x', 'configs/quickstart.py'))
  table = tables.Table('t', 't', '', rows, ())
  root = str(tmp_path / 'runs')
  _finish(reproduce.row_workdir(root, 'cpu', 'dense', 0), 'old')
  _finish(reproduce.row_workdir(root, 'cpu', 'other', 0), 'new')
  config = reproduce.row_config(rows[1]).to_dict()
  prior = {('l1', 0): {'row': 'l1', 'seed': 0, 'revision': 'new', 'config': config}}
  monkeypatch.setattr(provenance, 'stale_reason',
                      lambda revision: 'changed' if revision == 'old' else '')
  ran = []

  def run_row(args, workdir, log_path):
    ran.append(os.path.basename(workdir))
    _finish(workdir, 'new')
    return True, ''

  monkeypatch.setattr(reproduce, 'run_row', run_row)
  statuses = reproduce.run_table(table, 'cpu', 1, root, (), prior=prior, rerun=rerun)
  assert ran == runs
  assert [s['status'] for s in statuses] == (
      ['finished', 'recorded', 'finished'] if rerun == 'none' else
      ['finished', 'finished', 'finished'])
  aside = [p for p in os.listdir(os.path.join(root, 'cpu')) if 'replaced' in p]
  assert sorted(p.split('.')[0] for p in aside) == sorted(
      r for r in runs if r != 'l1')  # l1 had no workdir: only its record.
  for p in aside:  # Moved aside, never deleted.
    assert workdir_lib.read_json(os.path.join(root, 'cpu', p, 'summary.json'))


def test_stale_rows_are_marked_in_the_table():
  table = tables.Table('t', 't', 'notes', (
      tables.Row('a', 'A', 'm', 'c'), tables.Row('b', 'B', 'm', 'c')), (tables.TOP1,))
  recs = [{'row': 'a', 'seed': 0, 'summary': {'top1': 0.5}, 'revision': 'r1',
           'hardware': {}, 'stale': ''},
          {'row': 'b', 'seed': 0, 'summary': {'top1': 0.6}, 'revision': 'r0',
           'hardware': {}, 'stale': 'train changed since r0'}]
  text = reproduce.markdown(table, 'cpu', recs, [], 1, 'abcdef1234567890')
  assert '| A | 0.500 |' in text and '| B (stale) | 0.600 |' in text
  assert 'revision abcdef123456' in text and '- b (seed 0): train changed since r0' in text


def test_stale_reason_compares_the_code_with_head():
  head = provenance.revision()
  if head == 'unknown':
    pytest.skip('not a git checkout')
  assert provenance.stale_reason(head.removesuffix('-dirty')) == ''
  assert 'uncommitted' in provenance.stale_reason(head.removesuffix('-dirty') + '-dirty')
  assert 'not in this repository' in provenance.stale_reason('0' * 40)
  first = subprocess.run(['git', '-C', ROOT, 'rev-list', '--max-parents=0', 'HEAD'],
                         capture_output=True, text=True).stdout.split()[0]
  assert 'changed since' in provenance.stale_reason(first)


def test_wall_time_counts_every_attempt_and_at_least_the_runs_own_count():
  assert reproduce.wall_time([{'seconds': 5.0}, {'seconds': 7.0}],
                             {'wall_time_s': 3.0}) == 12.0
  # Attempts made outside the harness are only in the run's own cumulative count.
  assert reproduce.wall_time([{'seconds': 5.0}], {'wall_time_s': 20.0}) == 20.0
  assert reproduce.wall_time([], {'wall_time_s': 20.0}) == 20.0


def test_cost_check_column_counts_units_by_their_fate():
  log = [{'unit': 0, 'action': 'restore'}, {'unit': 0, 'action': 'accept'},
         {'unit': 1, 'action': 'accept'}, {'unit': 2, 'action': 'halve_lambda'},
         {'unit': 2, 'action': 'give_up'}, {'unit': 3, 'action': 'give_up'}]
  assert tables.cost_check({'cost_check': log}) == '2 / 2 / 2'
  assert tables.cost_check({}) is None
