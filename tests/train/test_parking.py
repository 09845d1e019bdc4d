"""Parked rows: an unfinished row copied with the results resumes on another machine."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.test_damaged_state import damage
from tests.test_main import ROOT
from tests.train.test_loop import final_state
from tests.train.test_reproduce import TINY, _finish
from train import dispatch, errors, parking, reproduce, table_results, tables
from train import workdir as workdir_lib

SAVES_EVERY_2 = {**TINY, 'checkpoint_every_steps': 2}  # 6 steps.
ROW = tables.Row('a', 'a', 'dense', 'configs/quickstart.py', SAVES_EVERY_2)
TABLE = f'''
from train.tables import TOP1, Row, Table
SAVES_EVERY_2 = {SAVES_EVERY_2!r}

def get_table(preset):
  return Table('parks', 'parks', '', (
      Row('a', 'a', 'dense', 'configs/quickstart.py', SAVES_EVERY_2),),
               (TOP1,))
'''


def interrupted_run(workdir: str) -> None:
  """Row `a` stopped after step 5: its checkpoints are steps 2, 4 and an unfinished 6."""
  assert dispatch.train_and_evaluate(reproduce.row_config(ROW), workdir,
                                     stop_at_step=5) == {}
  os.makedirs(os.path.join(workdir, 'checkpoints', '6.orbax-checkpoint-tmp-1'))


def test_a_parked_row_resumes_on_a_new_machine_and_ends_as_an_uninterrupted_run(tmp_path):
  first, results = str(tmp_path / 'first'), str(tmp_path / 'results')
  table = tables.Table('parks', 'parks', '', (
      ROW, tables.Row('done', 'done', 'dense', 'configs/quickstart.py', TINY),
      tables.Row('fresh', 'fresh', 'dense', 'configs/quickstart.py', TINY)), ())
  interrupted_run(reproduce.row_workdir(first, 'cpu', 'a', 0))
  _finish(table.rows[1], reproduce.row_workdir(first, 'cpu', 'done', 0))
  os.makedirs(os.path.join(reproduce.row_workdir(first, 'cpu', 'fresh', 0), 'checkpoints'))
  assert reproduce.park_unfinished(table, 'cpu', 1, first, results) == []
  # Only the unfinished row with a checkpoint is parked, with its newest complete one.
  parked = parking.parked_dir(results, 'cpu', 'a', 0)
  assert os.listdir(os.path.dirname(parked)) == ['a']
  assert parking.complete_steps(os.path.join(first, 'cpu', 'a', 'checkpoints')) == [2, 4]
  assert parking.complete_steps(os.path.join(parked, 'checkpoints')) == [4]
  assert not [n for n in os.listdir(os.path.join(parked, 'checkpoints')) if 'tmp' in n]
  shutil.rmtree(first)  # Another machine: the parked copy is all that is left.
  table_file = tmp_path / 'parks.py'
  table_file.write_text(TABLE)
  second = str(tmp_path / 'second')
  run = subprocess.run([sys.executable, '-m', 'train.reproduce', f'--table={table_file}',
                        f'--root={second}', f'--results={results}', '--latency_batch=4'],
                       cwd=ROOT, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  workdir = reproduce.row_workdir(second, 'cpu', 'a', 0)
  with open(workdir + '.log') as f:
    assert 'Resuming from step 4 of 6' in f.read()
  assert not os.path.exists(parked)  # Finished: the parked copy is gone.
  logged = [json.loads(line)['step'] for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert logged == sorted(logged) and logged[-1] == 6
  straight = str(tmp_path / 'straight')
  dispatch.train_and_evaluate(reproduce.row_config(ROW), straight)
  config = reproduce.row_config(ROW)
  for x, y in zip(jax.tree.leaves(final_state(config, straight)),
                  jax.tree.leaves(final_state(config, workdir)), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def tree_bytes(folder: str) -> dict[str, bytes]:
  return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), 'rb').read()
          for d, _, files in os.walk(folder) for f in files}


def test_parking_never_replaces_a_copy_with_a_damaged_or_less_advanced_one(tmp_path,
                                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)  # --results is relative by default.
  root, results = str(tmp_path / 'runs'), 'results'
  table = tables.Table('parks', 'parks', '', (ROW,), ())
  workdir = reproduce.row_workdir(root, 'cpu', 'a', 0)
  destination = parking.parked_dir(results, 'cpu', 'a', 0)
  interrupted_run(workdir)
  assert reproduce.park_unfinished(table, 'cpu', 1, root, results) == []
  before = tree_bytes(destination)
  damage(tmp_path / 'runs' / 'cpu' / 'a' / 'checkpoints' / '4')
  with pytest.raises(errors.UserError, match=r'a: its copy failed.*checkpoints/4'):
    parking.park(workdir, destination)
  failures = reproduce.park_unfinished(table, 'cpu', 1, root, results)
  assert len(failures) == 1 and failures[0].startswith('a seed 0: ')
  assert tree_bytes(destination) == before  # The intact copy stays, untouched.
  assert os.listdir(os.path.dirname(destination)) == ['a']  # No half copy beside it.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))  # Now behind the copy.
  with pytest.raises(errors.UserError, match=r'further along \(\(4, -1\)\) than'):
    parking.park(workdir, destination)
  assert tree_bytes(destination) == before
  with pytest.raises(errors.MissingInputError, match='nothing to park'):
    parking.park(str(tmp_path / 'none'), str(tmp_path / 'b'))


def test_a_config_takes_this_machines_text_values_and_refuses_other_differences(tmp_path):
  workdir_lib.write_json(str(tmp_path / workdir_lib.CONFIG_FILE), {
      'init_from': '/a/dense', 'data': {'data_dir': '/a/data', 'image_size': 8}})
  assert parking.config_for_machine(str(tmp_path), {
      'init_from': '/b/dense', 'data.data_dir': '/b/data', 'data.image_size': '8'}) == {
          'init_from': '/b/dense', 'data': {'data_dir': '/b/data', 'image_size': 8}}
  with pytest.raises(ValueError, match='data.image_size is not a text value'):
    parking.config_for_machine(str(tmp_path), {'data.image_size': '16'})


def fake_run(folder: str, row: tables.Row, step: int, config_row: tables.Row | None = None,
             start: dict | None = None) -> str:
  """An unfinished run of `row` (config of `config_row`) with one checkpoint at `step`."""
  _finish(config_row or row, folder)
  os.remove(os.path.join(folder, workdir_lib.SUMMARY_FILE))
  os.makedirs(os.path.join(folder, 'checkpoints', str(step)))
  workdir_lib.write_json(os.path.join(folder, 'checkpoints', str(step), 'state'), {})
  if start:
    workdir_lib.write_json(os.path.join(folder, workdir_lib.START_FILE), start)
  return folder


def test_what_a_run_takes_from_a_parked_copy(tmp_path, monkeypatch):
  def row(name: str, start_from: str = '') -> tables.Row:
    return tables.Row(name, name, 'x', 'configs/quickstart.py', start_from=start_from)

  rows = (row('dense'), row('ft', 'dense'), row('ft_other_start', 'dense'), row('other'),
          row('own'), row('behind'), row('skipped'), row('recorded'))
  table = tables.Table('t', 't', '', rows, ())
  root, results = str(tmp_path / 'runs'), str(tmp_path / 'results')
  workdir = {r.name: reproduce.row_workdir(root, 'cpu', r.name, 0) for r in rows}
  parked = {r.name: parking.parked_dir(results, 'cpu', r.name, 0) for r in rows}
  _finish(rows[0], workdir['dense'])
  dense_start = {'row': 'dense', 'seed': 0, 'summary_digest': table_results.summary_digest(
      workdir_lib.read_json(os.path.join(workdir['dense'], workdir_lib.SUMMARY_FILE)))}
  fake_run(parked['ft'], rows[1], 3, start=dense_start)
  fake_run(parked['ft_other_start'], rows[2], 3,
           start={**dense_start, 'summary_digest': 'another dense run'})
  fake_run(parked['other'], rows[3], 3, tables.Row('other', 'o', 'x', 'configs/quickstart.py',
                                                   {'num_epochs': 9.0}))
  for name in ('dense', 'own', 'behind', 'skipped', 'recorded'):
    fake_run(parked[name], next(r for r in rows if r.name == name), 3)
  fake_run(workdir['own'], rows[4], 5)  # This machine's run is further along.
  fake_run(workdir['behind'], rows[5], 2)  # The parked copy is further along.
  os.makedirs(workdir['ft'])  # A start that failed before its first checkpoint.
  seen = {}

  def run_row(args, folder, log_path):
    name = os.path.basename(folder)
    seen[name] = parking.progress(folder)[0]
    if name == 'ft':
      seen['ft config'] = workdir_lib.read_json(os.path.join(folder, workdir_lib.CONFIG_FILE))
    _finish(next(r for r in rows if r.name == name), folder)
    return True, ''

  monkeypatch.setattr(reproduce, 'run_row', run_row)
  monkeypatch.setattr(reproduce, 'publish', lambda *args, **kwargs: None)
  prior = {('recorded', 0): {  # Finished on another machine, its results imported.
      'seed': 0, 'revision': 'r', 'summary': {},
      'config': {**reproduce.row_config(rows[-1]).to_dict(), 'seed': 0}}}
  statuses = reproduce.run_table(
      table, 'cpu', 1, root, ('data.cache_dir=/machine',), prior=prior, results=results,
      only=('ft', 'ft_other_start', 'other', 'own', 'behind'))
  assert [s['status'] for s in statuses] == ['finished'] * 6 + ['not run', 'recorded']
  # Restored where it is this row's run from the same start and further along, with this
  # machine's start path and --override values.
  ft_config = seen.pop('ft config')
  assert (ft_config['init_from'], ft_config['data']['cache_dir']) == (workdir['dense'],
                                                                      '/machine')
  assert seen == {'ft': 3, 'ft_other_start': -1, 'other': -1, 'own': 5, 'behind': 3}
  moved = sorted(p.split('.')[0] for p in os.listdir(os.path.join(root, 'cpu'))
                 if 'replaced' in p)
  assert moved == ['behind', 'ft']  # Moved aside for the copy, not deleted.
  # The rows finished here (dense before this call) lose their parked copies; the others
  # keep theirs.
  assert [n for n, path in parked.items() if os.path.exists(path)] == ['skipped', 'recorded']


def test_park_copies_only_runs_of_the_rows_config(tmp_path):
  root, results = str(tmp_path / 'runs'), str(tmp_path / 'results')
  rows = (tables.Row('a', 'a', 'x', 'configs/quickstart.py', seeds=2),)
  table = tables.Table('t', 't', '', rows, ())
  fake_run(reproduce.row_workdir(root, 'cpu', 'a', 0), rows[0], 3,
           tables.Row('a', 'a', 'x', 'configs/quickstart.py', {'num_epochs': 9.0}))
  assert reproduce.park_unfinished(table, 'cpu', 1, root, results) == []
  assert not os.path.exists(os.path.join(results, parking.PARKED_DIR))
  assert parking.parked_dir(results, 'cpu', 'a', 1).endswith(os.path.join('cpu', 'a.seed1'))


def test_checkpoint_folders_and_progress_cover_channel_selection(tmp_path):
  for folder in ('selection/checkpoints/10', 'selection/checkpoints/20',
                 'selection/checkpoints/30.orbax-checkpoint-tmp-1',
                 'selection/unit_start/20', 'checkpoints/damaged/5'):
    os.makedirs(tmp_path / 'run' / folder)
    (tmp_path / 'run' / folder / 'state').write_text('{}')
  run = str(tmp_path / 'run')
  assert parking.checkpoint_folders(run) == ['selection/checkpoints', 'selection/unit_start']
  assert parking.progress(run) == (-1, 20)  # Selecting; no fine-tune checkpoint yet.
  shutil.copytree(run, tmp_path / 'copy', ignore=parking._ignored)  # What park copies.
  assert sorted(os.path.relpath(d, tmp_path / 'copy') for d, _, files in
                os.walk(tmp_path / 'copy') if files) == [
                    'selection/checkpoints/20', 'selection/unit_start/20']
  os.makedirs(tmp_path / 'run' / 'checkpoints' / '40')
  assert parking.progress(run) == (40, 20)  # Fine-tuning: further along than any selection.
