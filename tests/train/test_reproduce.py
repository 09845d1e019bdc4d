"""The reproduction harness: tables load, and a tiny table runs end to end."""

import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from tests.test_main import ROOT
from train import errors, provenance, reproduce, table_results, tables
from train import workdir as workdir_lib

ROW_LINE = r'\| %s( \(stale\))? \|'  # A dirty checkout's rows are stale.

TINY = {'data.image_size': 8, 'batch_size': 16, 'eval_batch_size': 100,
        'num_train_steps': 6, 'checkpoint_every_steps': 3, 'log_every_steps': 3}
TABLE = f'''
from train.tables import TOP1, Column, Row, Table, macs_reduction
TINY = {TINY!r}

def get_table(preset):
  return Table('tiny', 'tiny', 'Three rows and two that cannot finish.', (
      Row('dense', 'dense', 'dense', 'configs/quickstart.py', TINY),
      Row('l1', 'L1 filter', 'L1 filter', 'configs/quickstart.py',
          {{**TINY, 'channel_pruning.method': 'l1_filter',
            'channel_pruning.latency_batch': 4}}, start_from='dense'),
      Row('cci', 'CCI', 'CCI dynamic', 'configs/quickstart_cci.py', TINY),
      Row('broken', 'broken', 'x', 'configs/quickstart.py',
          {{**TINY, 'model.name': 'resnet7'}}),
      Row('after_broken', 'after', 'x', 'configs/quickstart.py', TINY,
          start_from='broken'),
  ), (TOP1, Column('MACs reduction', macs_reduction)))
'''


@pytest.mark.parametrize('name, preset', [
    ('cifar10_cci', 'cpu'), ('cifar10_cci', 'paper'), ('cifar10_c2s2', 'cpu'),
    ('cifar10_c2s2', 'paper'), ('cifar10_cci', 'cpu_short'), ('cifar10_c2s2', 'cpu_short'),
    ('imagenet_cci', 'paper'), ('imagenet_c2s2', 'paper'),
    ('quickstart', 'cpu'), ('segmentation_digits', 'cpu'), ('segmentation_digits', 'paper')])
def test_every_row_of_the_shipped_tables_has_a_valid_config(name, preset):
  table = reproduce.load_table(name, preset)
  for row in table.rows:
    reproduce.row_config(row).lock()


SHIPPED_TABLES = [('cifar10_cci', 'cpu'), ('cifar10_cci', 'paper'), ('cifar10_cci', 'cpu_short'),
                  ('imagenet_cci', 'paper'), ('segmentation_digits', 'cpu'),
                  ('segmentation_digits', 'paper')]


@pytest.mark.parametrize('name, preset', SHIPPED_TABLES)
def test_cci_on_a_compact_model_groups_every_width_its_start_keeps(name, preset):
  """A CCI row trained on a start row's widths gets widths its group divides: the
  start's `channel_multiple` is a multiple of `sparsity.group_size`, else the kernels
  reading the odd widths stay dense (cifar10_cci's first C2S2 + CCI run: 0.424)."""
  table = reproduce.load_table(name, preset)
  rows = {row.name: row for row in table.rows}
  for row in table.rows:
    config = reproduce.row_config(row)
    if not row.widths_from_start or 'sparsity' not in config:
      continue
    start = reproduce.row_config(rows[row.start_from])
    multiple = start.channel_pruning.channel_multiple
    assert multiple % config.sparsity.group_size == 0, (
        f'{name}/{row.name}: start {row.start_from} keeps multiples of {multiple}, '
        f'group_size is {config.sparsity.group_size}')


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
  with pytest.raises(ValueError, match='row a has seeds=0'):
    tables.Table('t', 't', '', (tables.Row('a', 'a', 'm', 'c', seeds=0),), ())
  with pytest.raises(ValueError, match='row a takes its widths from a start_from row'):
    tables.Table('t', 't', '', (tables.Row('a', 'a', 'm', 'c', widths_from_start=True),),
                 ())


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
                                                 'tiny.png', reproduce.PUBLISHED_DIR}
  published = results / reproduce.PUBLISHED_DIR / 'cpu'
  assert sorted(p.name for p in published.iterdir()) == ['cci', 'dense', 'l1']  # Seed 0.
  # The CCI model is kept packed (values and indices), with the export's manifest.
  assert sorted(p.name for p in (published / 'cci').iterdir()) == [
      'cci_packed.npz', 'config.json', 'manifest.json', 'summary.json', 'widths.json']
  with np.load(published / 'cci' / 'cci_packed.npz') as packed:
    assert int(packed['keep']) == 2 and packed['group_size'] == 8
    assert any(k.endswith('/indices') and packed[k].dtype == np.uint8 for k in packed)
  assert (json.loads((published / 'dense' / 'summary.json').read_text()) ==
          json.loads((tmp_path / 'runs' / 'cpu' / 'dense' / 'summary.json').read_text()))
  text = (results / 'tiny.md').read_text()
  assert re.search(ROW_LINE % 'dense', text) and re.search(ROW_LINE % 'L1 filter', text)
  assert 'broken (seed 0): failed' in text and 'resnet7' in text
  assert 'after_broken (seed 0): blocked: needs row broken' in text
  with open(results / 'tiny.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['row'] for r in rows] == ['dense', 'l1', 'cci']
  assert float(rows[1]['MACs reduction']) > 1.0
  first_json = (results / 'tiny.json').read_text()
  record = json.loads(first_json)['rows'][1]
  assert record['config']['channel_pruning']['method'] == 'l1_filter'
  assert record['config']['init_from'].endswith(os.path.join('cpu', 'dense'))
  assert record['revision'] and record['hardware']['devices'] >= 1
  assert record['latency_ms'] > 0 and record['wall_time_s'] > 0 and record['seed'] == 0
  dense_record = json.loads(first_json)['rows'][0]
  assert record['start'] == {'row': 'dense', 'seed': 0, 'summary_digest':
                             table_results.summary_digest(dense_record['summary'])}
  assert table_results.changed_start(record, [dense_record, record]) == ''
  # Each run's code is what it imported: the selection code only where it selected,
  # so a change to C2S2's selection leaves the dense and CCI rows current.
  code = {r['row']: set(r['summary']['code']) for r in json.loads(first_json)['rows']}
  selection_code = {'c2s2/selection.py', 'c2s2/surgery.py', 'train/channel_baselines.py'}
  assert selection_code <= code['l1'] and 'c2s2/graph.py' in code['dense']
  for row in ('dense', 'cci'):
    assert not code[row] & (selection_code | {'train/c2s2_driver.py', 'c2s2/optim.py'})
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
  # --report_only times nothing (it may run beside training): a row recorded without a
  # latency stays without one, unless --remeasure_latency asks.
  untimed = json.loads((results / 'tiny.json').read_text())
  del untimed['rows'][1]['latency_ms']
  (results / 'tiny.json').write_text(json.dumps(untimed))
  report = subprocess.run(args + ['--report_only'], cwd=ROOT, capture_output=True,
                          text=True)
  rows = json.loads((results / 'tiny.json').read_text())['rows']
  assert 'latency_ms' not in rows[1], report.stderr[-2000:]
  assert rows[0]['latency_ms'] == again[0]['latency_ms']
  subprocess.run(args + ['--report_only', '--remeasure_latency'], cwd=ROOT,
                 capture_output=True, text=True)
  assert json.loads((results / 'tiny.json').read_text())['rows'][1]['latency_ms'] > 0
  # Without the workdirs, the recorded rows stand and nothing is rerun for them.
  shutil.rmtree(tmp_path / 'runs')
  third = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
  assert third.returncode != 0
  assert not (tmp_path / 'runs' / 'cpu' / 'dense').exists()
  text = (results / 'tiny.md').read_text()
  assert re.search(ROW_LINE % 'dense', text) and re.search(ROW_LINE % 'L1 filter', text)
  # A machine with the results but no workdirs runs a lost row from the kept dense
  # variables, without training dense again.
  kept = json.loads((results / 'tiny.json').read_text())
  kept['rows'] = [r for r in kept['rows'] if r['row'] != 'l1']
  (results / 'tiny.json').write_text(json.dumps(kept))
  fourth = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
  assert fourth.returncode != 0 and "['broken']" in fourth.stderr, fourth.stderr[-2000:]
  assert not (tmp_path / 'runs' / 'cpu' / 'dense').exists()
  l1 = [r for r in json.loads((results / 'tiny.json').read_text())['rows']
        if r['row'] == 'l1']
  assert l1 and l1[0]['config']['init_from'] == str(published / 'dense')


def start_table(start_from: str, b_learning_rate: float = 0.05) -> str:
  """Two dense rows and a fine-tune of the one `start_from` names."""
  return f'''
from train.tables import TOP1, Row, Table
TINY = {TINY!r}

def get_table(preset):
  return Table('starts', 'starts', '', (
      Row('a', 'a', 'dense', 'configs/quickstart.py', TINY),
      Row('b', 'b', 'dense', 'configs/quickstart.py',
          {{**TINY, 'optimizer.learning_rate': {b_learning_rate}}}),
      Row('ft', 'ft', 'dense', 'configs/quickstart.py', TINY, start_from={start_from!r}),
  ), (TOP1,))
'''


def test_a_row_whose_start_row_changed_is_marked_and_runs_again(tmp_path):
  table, results, runs = tmp_path / 'starts.py', tmp_path / 'results', tmp_path / 'runs'
  args = [sys.executable, '-m', 'train.reproduce', f'--table={table}', f'--root={runs}',
          f'--results={results}', '--latency_batch=4']

  def run(*extra: str) -> dict[str, dict]:
    done = subprocess.run(args + list(extra), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return {r['row']: r for r in json.loads((results / 'starts.json').read_text())['rows']}

  table.write_text(start_table('a'))
  assert run()['ft']['start']['row'] == 'a'
  table.write_text(start_table('b'))  # The table now starts ft from b.
  ft = run('--report_only')['ft']
  assert ft['start_from'] == 'b' and ft['start']['row'] == 'a'
  assert ft['stale'] == 'started from row a; the table starts it from row b now'
  assert re.search(r'\| ft \(stale\) \|', (results / 'starts.md').read_text())
  ft = run('--only=ft')['ft']  # The finished workdir is not ft's run: ft runs again.
  assert ft['start']['row'] == 'b' and not ft.get('stale')
  assert ft['config']['init_from'].endswith(os.path.join('cpu', 'b'))
  assert [p.name for p in (runs / 'cpu').glob('ft.replaced-*')]  # Moved, not lost.
  # On a machine with the results only, the record from b is not ft's run from a.
  table.write_text(start_table('a'))
  shutil.rmtree(runs)
  assert run('--report_only')['ft']['stale'] == (
      'started from row b; the table starts it from row a now')
  ft = run('--only=ft')['ft']
  assert ft['start']['row'] == 'a' and not ft.get('stale')
  assert ft['config']['init_from'] == str(results / reproduce.PUBLISHED_DIR / 'cpu' / 'a')
  # A recorded row whose config the table has changed since is marked too.
  table.write_text(start_table('a', b_learning_rate=0.02))
  assert run('--report_only')['b']['stale'] == "its config is not the row's in the table now"


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
  assert table_results.latencies_current([same], prior, 128)
  assert not table_results.latencies_current([same], prior, 64)  # Another batch.
  assert not table_results.latencies_current([{**same, 'summary': {'top1': 0.6}}], prior,
                                         128)  # The row ran again.
  assert not table_results.latencies_current([same, {**same, 'row': 'b'}], prior, 128)
  unmeasured = {k: v for k, v in recorded.items() if k != 'latency_ms'}
  assert not table_results.latencies_current([same], {('a', 0): unmeasured}, 128)
  assert not table_results.latencies_current([], prior, 128)


def _finish(row, workdir, revision='new', seed=0):
  """Makes `workdir` a finished run of `row`'s config made at `revision`."""
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.write_json(os.path.join(workdir, 'summary.json'),
                         {'revision': revision, 'wall_time_s': 1.0})
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.CONFIG_FILE),
                         {**reproduce.row_config(row).to_dict(), 'seed': seed})


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
  _finish(rows[0], reproduce.row_workdir(root, 'cpu', 'dense', 0), 'old')
  _finish(rows[2], reproduce.row_workdir(root, 'cpu', 'other', 0), 'new')
  config = reproduce.row_config(rows[1]).to_dict()
  prior = {('l1', 0): {'row': 'l1', 'seed': 0, 'revision': 'new', 'config': config}}
  monkeypatch.setattr(provenance, 'stale_reason',
                      lambda revision, code=None: 'changed' if revision == 'old' else '')
  ran = []

  def run_row(args, workdir, log_path):
    ran.append(os.path.basename(workdir))
    _finish(next(r for r in rows if r.name == ran[-1]), workdir)
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
  text = table_results.markdown(table, 'cpu', recs, [], 1, 'abcdef1234567890')
  assert '| A | 0.500 |' in text and '| B (stale) | 0.600 |' in text
  assert 'revision abcdef123456' in text and '- b (seed 0): train changed since r0' in text


def test_the_command_line_names_results_only_when_not_a_checkouts_own(tmp_path):
  table = tables.Table('t', 't', 'notes', (tables.Row('a', 'A', 'm', 'c'),), (tables.TOP1,))
  worktree = tmp_path / 'worktree'  # Another checkout's results/: still the default.
  (worktree / 'train').mkdir(parents=True)
  (worktree / 'train' / 'reproduce.py').write_text('')
  elsewhere = tmp_path / 'results'  # A folder named results/ outside any checkout.
  for results, flag in (('results', ''), (str(worktree / 'results'), ''),
                        (str(elsewhere), f' --results={elsewhere}'),
                        ('out/tables', ' --results=out/tables')):
    text = table_results.markdown(table, 'cpu', [], [], 1, 'head', results)
    assert f'Command: `python -m train.reproduce --table=t --preset=cpu{flag}`' in text


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
  assert table_results.wall_time([{'seconds': 5.0}, {'seconds': 7.0}],
                             {'wall_time_s': 3.0}) == 12.0
  # Attempts made outside the harness are only in the run's own cumulative count.
  assert table_results.wall_time([{'seconds': 5.0}], {'wall_time_s': 20.0}) == 20.0
  assert table_results.wall_time([], {'wall_time_s': 20.0}) == 20.0


def test_cost_check_column_counts_units_by_their_fate():
  log = [{'unit': 0, 'action': 'restore'}, {'unit': 0, 'action': 'accept'},
         {'unit': 1, 'action': 'accept'}, {'unit': 2, 'action': 'halve_lambda'},
         {'unit': 2, 'action': 'give_up'}, {'unit': 3, 'action': 'give_up'}]
  assert tables.cost_check({'cost_check': log}) == '2 / 2 / 2'
  assert tables.cost_check({}) is None


def test_cost_check_trace_lists_each_units_decisions_and_the_table_shows_seed_0s():
  reference = {'top1': 0.99, 'loss': 0.1}
  log = [{'unit': 0, 'action': 'restore', 'cost': {'top1': 0.95}, 'reference': reference,
          'layers': {'a/conv1': {'channels': 16, 'kept': 2, 'lambda': 0.3}}},
         {'unit': 0, 'action': 'accept', 'cost': {'top1': 0.985}, 'reference': reference,
          'layers': {'a/conv1': {'channels': 16, 'kept': 9, 'lambda': 0.3}},
          'macs_ratio': 0.8314, 'budget': 0.0125, 'landed': True},
         {'unit': 1, 'action': 'give_up', 'cost': {'top1': 0.9}, 'reference': reference,
          'layers': {'b/conv1': {'channels': 32, 'kept': 4, 'lambda': 0.15},
                     'c/conv1': {'channels': 32, 'kept': 8, 'lambda': 0.05}},
          'macs_ratio': 0.8314}]
  assert tables.cost_check_trace({'cost_check': log}) == [
      'unit 0 `a/conv1` (reference top1 0.990): 2/16 lambda 0.3 (top1 0.950) restore; '
      '9/16 lambda 0.3 (capped at the MACs target) (top1 0.985, budget 0.013) accept; '
      'MACs ratio 0.831',
      'unit 1 `b/conv1, c/conv1` (reference top1 0.990): 4/32 lambda 0.15, 8/32 lambda '
      '0.05 (top1 0.900) give_up; MACs ratio 0.831']
  assert tables.cost_check_trace({}) == []
  table = tables.Table('t', 't', '', (tables.Row('c', 'C', 'C2S2', 'c'),), (tables.TOP1,))
  recs = [{'row': 'c', 'seed': seed, 'summary': {'top1': 0.9}, 'revision': 'r',
           'hardware': {}, 'stale': '', 'cost_check': log[:1 + seed]} for seed in (0, 1)]
  text = table_results.markdown(table, 'cpu', recs, [], 2, 'head')
  assert 'C2S2 cost check of c (seed 0;' in text
  assert ('- unit 0 `a/conv1` (reference top1 0.990): 2/16 lambda 0.3 (top1 0.950) '
          'restore\n') in text


def test_a_text_cell_shows_one_value_when_the_seeds_agree_else_each_seeds_in_order():
  checks = {'agree': ['8 / 3 / 0'] * 3, 'differ': ['8 / 3 / 0', '6 / 1 / 0', '8 / 3 / 0']}
  rows = tuple(tables.Row(name, name, 'C2S2', 'c') for name in checks)
  table = tables.Table('t', 't', '', rows,
                       (tables.Column('check', lambda r: r['check'], '{}'),))
  recs = [{'row': name, 'seed': seed, 'summary': {'top1': 0.9}, 'revision': 'r',
           'hardware': {}, 'stale': '', 'check': value}
          for name, values in checks.items() for seed, value in enumerate(values)]
  text = table_results.markdown(table, 'cpu', recs, [], 3, 'head')
  assert '| agree | 8 / 3 / 0 |' in text
  assert '| differ | 8 / 3 / 0, 6 / 1 / 0, 8 / 3 / 0 |' in text



def test_seeds_flag_adds_fine_tune_seeds_but_never_retrains_a_start_row(tmp_path,
                                                                        monkeypatch):
  rows = (tables.Row('dense', 'dense', 'dense', 'configs/quickstart.py'),
          tables.Row('pre', 'pre', 'x', 'configs/quickstart.py', seeds=2),
          tables.Row('ft', 'ft', 'L1', 'configs/quickstart.py', start_from='dense'),
          tables.Row('ft_pre', 'fp', 'x', 'configs/quickstart.py', start_from='pre'))
  table = tables.Table('t', 't', '', rows, ())
  root, ran = str(tmp_path / 'runs'), []

  def run_row(args, workdir, log_path):
    row = next(r for r in rows if r.name == os.path.basename(workdir))
    seed = int(next(a for a in args if a.startswith('--config.seed=')).split('=')[1])
    init = [a.split('=', 1)[1] for a in args if a.startswith('--config.init_from=')]
    ran.append((row.name, seed, os.path.relpath(init[0], root) if init else ''))
    _finish(row, workdir, seed=seed)
    return True, ''

  monkeypatch.setattr(reproduce, 'run_row', run_row)
  assert [reproduce.row_seeds(table, r, 3) for r in rows] == [1, 2, 3, 3]
  reproduce.run_table(table, 'cpu', 3, root, ())
  # dense (a start row of one seed) runs once: ft's seeds 1-2 fine-tune its seed 0;
  # pre declares 2 seeds, so ft_pre seed 1 starts from pre seed 1, seed 2 from seed 0.
  assert sorted(ran) == sorted(
      [('dense', 0, ''), ('pre', 0, ''), ('pre', 1, '')] +
      [('ft', s, 'cpu/dense') for s in range(3)] +
      [('ft_pre', 0, 'cpu/pre'), ('ft_pre', 1, os.path.join('cpu', 'seed1', 'pre')),
       ('ft_pre', 2, 'cpu/pre')])

def test_fine_tune_seeds_start_from_one_dense_run_and_results_come_as_rows_finish(
    tmp_path, monkeypatch):
  rows = (tables.Row('dense', 'dense', 'dense', 'configs/quickstart.py'),
          tables.Row('ft', 'ft', 'L1', 'configs/quickstart.py', start_from='dense',
                     seeds=3),
          tables.Row('paired', 'p', 'x', 'configs/quickstart.py', start_from='ft',
                     seeds=2),
          tables.Row('after', 'a', 'x', 'configs/quickstart.py', start_from='ft',
                     widths_from_start=True),
          tables.Row('cci', 'c', 'x', 'configs/quickstart_cci.py', start_from='dense',
                     seeds=2))
  table = tables.Table('t', 't', '', rows, ())
  root, results = str(tmp_path / 'runs'), str(tmp_path / 'results')
  ran, reports = [], []

  def run_row(args, workdir, log_path):
    row = next(r for r in rows if r.name == os.path.basename(workdir))
    seed = int(next(a for a in args if a.startswith('--config.seed=')).split('=')[1])
    init = [a.split('=', 1)[1] for a in args if a.startswith('--config.init_from=')]
    widths = [a.split('=', 1)[1] for a in args if a.startswith('--config.model.widths=')]
    ran.append((row.name, seed, os.path.relpath(init[0], root) if init else '', widths))
    _finish(row, workdir, seed=seed)
    workdir_lib.write_json(os.path.join(workdir, 'widths.json'), {'conv': seed + 2})
    return True, ''

  kept_as = {}

  def publish(workdir, destination, variables, packed):
    kept_as[os.path.basename(destination)] = (variables, packed)
    shutil.copytree(workdir, destination, dirs_exist_ok=True)

  monkeypatch.setattr(reproduce, 'run_row', run_row)
  monkeypatch.setattr(reproduce, 'publish', publish)
  statuses = reproduce.run_table(table, 'cpu', 1, root, (), results=results,
                                 on_finished=reports.append)
  assert [(s['row'], s['seed']) for s in statuses] == [
      ('dense', 0), ('ft', 0), ('paired', 0), ('after', 0), ('cci', 0), ('ft', 1),
      ('paired', 1), ('cci', 1), ('ft', 2)]
  seed1 = os.path.join('seed1', 'ft')
  assert ran == [('dense', 0, '', []), ('ft', 0, 'cpu/dense', []),
                 ('paired', 0, 'cpu/ft', []), ('after', 0, 'cpu/ft', ['{"conv": 2}']),
                 ('cci', 0, 'cpu/dense', []), ('ft', 1, 'cpu/dense', []),
                 ('paired', 1, f'cpu/{seed1}', []), ('cci', 1, 'cpu/dense', []),
                 ('ft', 2, 'cpu/dense', [])]
  # One report per finished pair; the pairs still to run are listed as pending.
  assert len(reports) == 9
  assert [(s['row'], s['seed'], s['status']) for s in reports[0]][:2] == [
      ('dense', 0, 'finished'), ('ft', 0, 'not run')]
  # Kept: seed 0 of every row and ft seed 1 (paired seed 1 starts from it), not seed 2.
  kept = sorted(os.listdir(os.path.join(results, reproduce.PUBLISHED_DIR, 'cpu')))
  assert kept == ['after', 'cci', 'dense', 'ft', 'ft.seed1', 'paired']
  # Variables where a row starts from it or it is not CCI; CCI seed 0 packed.
  assert kept_as == {'dense': (True, False), 'ft': (True, False), 'paired': (True, False),
                     'after': (True, False), 'cci': (False, True),
                     'ft.seed1': (True, False)}


def test_a_finished_workdir_of_another_config_runs_again_an_unfinished_one_resumes(
    tmp_path, monkeypatch):
  rows = (tables.Row('a', 'a', 'x', 'configs/quickstart.py'),
          tables.Row('b', 'b', 'x', 'configs/quickstart.py'),
          tables.Row('c', 'c', 'x', 'configs/quickstart.py'))
  table = tables.Table('t', 't', '', rows, ())
  root = str(tmp_path / 'runs')
  other = tables.Row('a', 'a', 'x', 'configs/quickstart.py', {'num_epochs': 9.0})
  _finish(other, reproduce.row_workdir(root, 'cpu', 'a', 0))  # An older preset's.
  unfinished = reproduce.row_workdir(root, 'cpu', 'b', 0)
  _finish(rows[1], unfinished)
  os.remove(os.path.join(unfinished, 'summary.json'))  # Interrupted: resumes in place.
  _finish(rows[2], reproduce.row_workdir(root, 'cpu', 'c', 0))
  ran = []

  def run_row(args, workdir, log_path):
    ran.append((os.path.basename(workdir), os.listdir(workdir) if os.path.exists(workdir)
                else None))
    _finish(next(r for r in rows if r.name == os.path.basename(workdir)), workdir)
    return True, ''

  monkeypatch.setattr(reproduce, 'run_row', run_row)
  statuses = reproduce.run_table(table, 'cpu', 1, root, ())
  assert [s['status'] for s in statuses] == ['finished'] * 3
  assert ran == [('a', None), ('b', [workdir_lib.CONFIG_FILE])]
  aside = [p for p in os.listdir(os.path.join(root, 'cpu')) if 'replaced' in p]
  assert [p.split('.')[0] for p in aside] == ['a']
  assert workdir_lib.read_json(os.path.join(root, 'cpu', aside[0],
                                            workdir_lib.CONFIG_FILE))['num_epochs'] == 9.0


def test_rows_recorded_by_another_table_of_the_preset_count_as_the_same_run(tmp_path):
  def write(name, preset, rows):
    workdir_lib.write_json(str(tmp_path / f'{name}.json'),
                           {'table': name, 'preset': preset, 'rows': rows})

  write('mine', 'cpu', [{'row': 'dense', 'seed': 0, 'from': 'mine'}])
  write('other', 'cpu', [{'row': 'dense', 'seed': 0, 'from': 'other'},
                         {'row': 'c2s2_2x', 'seed': 0, 'from': 'other'}])
  write('paper', 'paper', [{'row': 'r50', 'seed': 0, 'from': 'paper'}])
  prior = table_results.previous_records(str(tmp_path), 'mine', 'cpu')
  assert {k: v['from'] for k, v in prior.items()} == {
      ('dense', 0): 'mine', ('c2s2_2x', 0): 'other'}
  assert table_results.previous_records(str(tmp_path / 'none'), 'mine', 'cpu') == {}


@pytest.mark.parametrize('failure', [
    RuntimeError('Exporting a failed: see a.log.'),  # The export.
    errors.UserError('workdir=a: Exporting a failed: damaged checkpoint'),  # Its reading.
])
def test_a_model_that_cannot_be_kept_is_reported_and_the_table_goes_on(tmp_path,
                                                                       monkeypatch,
                                                                       failure):
  rows = (tables.Row('a', 'a', 'x', 'configs/quickstart.py'),
          tables.Row('b', 'b', 'x', 'configs/quickstart.py'))
  table = tables.Table('t', 't', '', rows, ())
  root, results = str(tmp_path / 'runs'), str(tmp_path / 'results')

  def run_row(args, workdir, log_path):
    _finish(next(r for r in rows if r.name == os.path.basename(workdir)), workdir)
    return True, ''

  def publish(workdir, destination, variables, packed):
    if os.path.basename(workdir) == 'a':
      raise failure
    os.makedirs(destination)

  monkeypatch.setattr(reproduce, 'run_row', run_row)
  monkeypatch.setattr(reproduce, 'publish', publish)
  statuses = reproduce.run_table(table, 'cpu', 1, root, (), results=results)
  assert [(s['status'], s['detail'][:14]) for s in statuses] == [
      ('finished', 'model not kept'), ('finished', '')]
  text = table_results.markdown(table, 'cpu', [], statuses, 1, 'head')
  assert '- a (seed 0): model not kept in' in text and 'Exporting a failed' in text


def test_the_shipped_models_stay_small():
  """results/checkpoints travels with every clone: the issue caps it at 30 MB."""
  folder = os.path.join(ROOT, 'results', reproduce.PUBLISHED_DIR)
  size = sum(os.path.getsize(os.path.join(parent, name))
             for parent, _, names in os.walk(folder) for name in names)
  assert size < 30e6, f'{folder} holds {size / 1e6:.1f} MB'


@pytest.mark.parametrize('macs, target, expected', [
    (50, 0.50, 'yes'),            # Exactly at the point.
    (51.4, 0.50, 'yes'),          # 2.8% above: inside.
    (48.4, 0.50, 'no: 0.484 for 0.500'),  # 3.2% below.
    (40, 0.0, None),              # No target: not a point row.
])
def test_a_row_is_at_its_macs_point_within_three_percent(macs, target, expected):
  record = {'summary': {'macs': macs, 'macs_dense': 100},
            'config': {'channel_pruning': {'target_macs_ratio': target}}}
  assert tables.on_point(record) == expected
  assert tables.macs_ratio(record) == macs / 100


def test_each_preset_reads_its_own_paragraph_of_the_table_notes():
  doc = 'Title.\n\n  command\n\n`cpu`: long runs.\n\n`cpu_short`: short runs.\n'
  assert tables.preset_notes(doc, 'cpu') == '`cpu`: long runs.'
  assert tables.preset_notes(doc, 'cpu_short') == '`cpu_short`: short runs.'
  with pytest.raises(ValueError, match='no paragraph for preset `paper`'):
    tables.preset_notes(doc, 'paper')


def test_code_files_are_the_imported_project_files_by_git_blob_hash():
  code = provenance.code_files()
  assert 'train/provenance.py' in code and 'requirements.txt' in code
  assert not any(p.startswith(('tests/', 'docs/')) for p in code)  # Not result code.
  hashed = subprocess.run(['git', '-C', ROOT, 'hash-object', 'train/provenance.py'],
                          capture_output=True, text=True)
  if hashed.returncode:
    pytest.skip('not a git checkout')
  assert code['train/provenance.py'] == hashed.stdout.strip()


def test_stale_reason_names_only_the_changed_files_the_run_imported():
  if provenance.revision() == 'unknown':
    pytest.skip('not a git checkout')
  head = subprocess.run(['git', '-C', ROOT, 'ls-tree', 'HEAD', 'train/loop.py', 'main.py'],
                        capture_output=True, text=True).stdout.splitlines()
  code = {line.split('\t')[1]: line.split()[2] for line in head}
  assert provenance.stale_reason('0' * 40, code) == ''  # Same files: not stale.
  changed = {**code, 'train/loop.py': '1' * 40}
  assert provenance.stale_reason('abc', changed) == 'train/loop.py changed since abc'
  gone = {**code, 'train/removed.py': '2' * 40}
  assert provenance.stale_reason('abc', gone) == 'train/removed.py changed since abc'
  # A config file's change shows in the run's recorded config, not here.
  assert provenance.stale_reason('abc', {**code, 'configs/base.py': '3' * 40}) == ''


def test_seed_comparisons_call_a_gap_real_only_beyond_the_combined_std():
  lines = tables.seed_comparisons([('A', [0.90, 0.92]), ('B', [0.88, 0.88]),
                                   ('C', [0.905, 0.915]), ('dense', [0.93])])
  # A - B = 0.03 > hypot(0.01414, 0) = 0.01414; A - C = 0; B - C = -0.03 > 0.00707.
  assert lines == [
      'A minus B: +0.0300 top-1, combined std 0.0141: A is better',
      'A minus C: +0.0000 top-1, combined std 0.0158: within seed noise',
      'B minus C: -0.0300 top-1, combined std 0.0071: C is better']
  assert tables.seed_comparisons([('A', [0.9, 0.91]), ('dense', [0.93])]) == []
  # Equal means with no spread: float noise is no gap.
  assert tables.seed_comparisons([('A', [0.1, 0.1, 0.1]), ('B', [0.3 / 3] * 3)])[0] \
      .endswith('within seed noise')


@hypothesis.given(st.floats(0.2, 0.8), st.floats(0.2, 0.8), st.floats(0, 0.1),
                  st.floats(0, 0.1))
def test_seed_comparison_verdict_follows_the_gap_and_the_spread(mean_a, mean_b, half_a,
                                                                half_b):
  # Two seeds at mean +- half: the std is half * sqrt(2), so the combined std is
  # sqrt(2 * (half_a^2 + half_b^2)).
  combined = math.sqrt(2 * (half_a**2 + half_b**2))
  hypothesis.assume(abs(abs(mean_a - mean_b) - combined) > 1e-6)
  (line,) = tables.seed_comparisons([('A', [mean_a - half_a, mean_a + half_a]),
                                     ('B', [mean_b - half_b, mean_b + half_b])])
  if abs(mean_a - mean_b) < combined:
    assert line.endswith('within seed noise')
  else:
    assert line.endswith('A is better' if mean_a > mean_b else 'B is better')


def test_tables_list_seed_comparisons_under_the_rows():
  table = tables.Table('t', 't', '', (tables.Row('l1', 'L1', 'L1', 'c', seeds=2),
                                      tables.Row('c2', 'C2S2', 'C2S2', 'c', seeds=2)),
                       (tables.TOP1,))
  recs = [{'row': row, 'seed': seed, 'summary': {'top1': top1}, 'revision': 'r',
           'hardware': {}, 'stale': ''}
          for row, seed, top1 in (('l1', 0, 0.90), ('l1', 1, 0.90), ('c2', 0, 0.92),
                                  ('c2', 1, 0.94))]
  text = table_results.markdown(table, 'cpu', recs, [], 2, 'head')
  assert ('- L1 minus C2S2: -0.0300 top-1, combined std 0.0141: C2S2 is better\n'
          in text)


def test_a_row_kept_after_its_start_was_run_again_is_marked():
  dense = {'row': 'dense', 'seed': 0, 'summary': {'top1': 0.9}}
  started = {'row': 'l1', 'seed': 0, 'summary': {'top1': 0.8}, 'start_from': 'dense',
             'start': {'row': 'dense', 'seed': 0,
                       'summary_digest': table_results.summary_digest({'top1': 0.9})}}
  assert table_results.changed_start(started, [dense, started]) == ''
  rerun = {**dense, 'summary': {'top1': 0.91}}
  assert table_results.changed_start(started, [rerun, started]) == (
      'started from another run of dense (seed 0) than the one in this table')
  assert table_results.changed_start(dense, [dense]) == ''  # Records no start.
  moved = {**started, 'start_from': 'slimming_train'}  # The table changed its start.
  assert table_results.changed_start(moved, [dense, moved]) == (
      'started from row dense; the table starts it from row slimming_train now')
  assert table_results.changed_start({**started, 'start_from': ''}, [dense]) == (
      'started from row dense; the table starts it from scratch now')
