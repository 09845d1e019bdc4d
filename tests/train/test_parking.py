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
from train import dispatch, errors, parking, reproduce, tables
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


def test_a_damaged_copy_is_refused_and_the_older_parked_copy_is_kept(tmp_path):
  root, results = str(tmp_path / 'runs'), str(tmp_path / 'results')
  table = tables.Table('parks', 'parks', '', (ROW,), ())
  workdir = reproduce.row_workdir(root, 'cpu', 'a', 0)
  destination = parking.parked_dir(results, 'cpu', 'a', 0)
  interrupted_run(workdir)
  assert reproduce.park_unfinished(table, 'cpu', 1, root, results) == []
  before = sorted(os.listdir(destination))
  damage(tmp_path / 'runs' / 'cpu' / 'a' / 'checkpoints' / '4')
  with pytest.raises(errors.UserError, match=r'a: its copy failed.*checkpoints/4'):
    parking.park(workdir, destination)
  failures = reproduce.park_unfinished(table, 'cpu', 1, root, results)
  assert len(failures) == 1 and failures[0].startswith('a seed 0: ')
  assert sorted(os.listdir(destination)) == before and parking.checkpoint_folders(
      destination) == ['checkpoints']
  assert os.listdir(os.path.dirname(destination)) == ['a']  # No half copy beside it.
  with pytest.raises(errors.MissingInputError, match='nothing to park'):
    parking.park(str(tmp_path / 'none'), str(tmp_path / 'b'))


def fake_parked(results: str, row: tables.Row, config_row: tables.Row | None = None) -> str:
  """A parked copy of `row` holding one checkpoint file and a config (`config_row`'s)."""
  parked = parking.parked_dir(results, 'cpu', row.name, 0)
  _finish(config_row or row, parked)
  os.remove(os.path.join(parked, workdir_lib.SUMMARY_FILE))
  os.makedirs(os.path.join(parked, 'checkpoints', '3'))
  workdir_lib.write_json(os.path.join(parked, 'checkpoints', '3', 'state'), {})
  return parked


def test_what_a_run_takes_from_a_parked_copy(tmp_path, monkeypatch):
  dense = tables.Row('dense', 'dense', 'x', 'configs/quickstart.py')
  rows = (dense,
          tables.Row('ft', 'ft', 'x', 'configs/quickstart.py', start_from='dense'),
          tables.Row('other', 'other', 'x', 'configs/quickstart.py'),
          tables.Row('own', 'own', 'x', 'configs/quickstart.py'),
          tables.Row('skipped', 'skipped', 'x', 'configs/quickstart.py'),
          tables.Row('recorded', 'recorded', 'x', 'configs/quickstart.py'))
  table = tables.Table('t', 't', '', rows, ())
  root, results = str(tmp_path / 'runs'), str(tmp_path / 'results')
  _finish(dense, reproduce.row_workdir(root, 'cpu', 'dense', 0))
  another_config = tables.Row('other', 'o', 'x', 'configs/quickstart.py', {'num_epochs': 9.0})
  parked = {r.name: fake_parked(results, r, another_config if r.name == 'other' else None)
            for r in rows[1:]}
  own = reproduce.row_workdir(root, 'cpu', 'own', 0)  # This machine's own checkpoint.
  _finish(rows[3], own)
  os.remove(os.path.join(own, workdir_lib.SUMMARY_FILE))
  os.makedirs(os.path.join(own, 'checkpoints', '5'))
  workdir_lib.write_json(os.path.join(own, 'checkpoints', '5', 'state'), {})
  leftover = reproduce.row_workdir(root, 'cpu', 'ft', 0)
  os.makedirs(leftover)  # A start that failed before its first checkpoint.
  seen = {}

  def run_row(args, workdir, log_path):
    name = os.path.basename(workdir)
    seen[name] = sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) if os.path.isdir(
        os.path.join(workdir, 'checkpoints')) else []
    if name == 'ft':
      seen['init_from'] = workdir_lib.read_json(
          os.path.join(workdir, workdir_lib.CONFIG_FILE))['init_from']
    _finish(next(r for r in rows if r.name == name), workdir)
    return True, ''

  monkeypatch.setattr(reproduce, 'run_row', run_row)
  monkeypatch.setattr(reproduce, 'publish', lambda *args, **kwargs: None)
  prior = {('recorded', 0): {  # Finished on another machine, its results imported.
      'seed': 0, 'revision': 'r', 'summary': {},
      'config': {**reproduce.row_config(rows[-1]).to_dict(), 'seed': 0}}}
  statuses = reproduce.run_table(table, 'cpu', 1, root, (), only=('ft', 'other', 'own'),
                                 prior=prior, results=results)
  assert [s['status'] for s in statuses] == ['finished'] * 4 + ['not run', 'recorded']
  # Restored where the workdir had no checkpoint, with this machine's start path.
  assert seen == {'ft': ['3'], 'init_from': reproduce.row_workdir(root, 'cpu', 'dense', 0),
                  'other': [], 'own': ['5']}
  assert [p for p in os.listdir(os.path.join(root, 'cpu')) if 'replaced' in p][0].startswith(
      'ft.replaced-')  # The leftover start is moved aside, not deleted.
  # The finished and recorded rows' parked copies are deleted; the row not run keeps its.
  assert [name for name, path in parked.items() if os.path.exists(path)] == ['skipped']
