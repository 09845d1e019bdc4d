"""Damaged checkpoints and files, a full disk and user errors, through main.py.

Each case runs the real command line in a subprocess and checks the exit status, the
one-line message on stderr (no traceback) and what is left on disk; a run that falls
back to an older checkpoint ends bit for bit where one uninterrupted run ends (the
module's shared reference: the 70-step quickstart of tests/test_kill.py).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_kill import (  # pylint: disable=unused-import
    C2S2, DENSE, ROOT, TIMEOUT_S, Runner, assert_same_c2s2, assert_same_result,
    c2s2_reference, dense_reference, env, latest)
from train import errors


def main_py(env: dict[str, str], *args: str, **extra_env: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT,
                        env={**env, **extra_env}, capture_output=True, text=True,
                        timeout=TIMEOUT_S)


def dense(workdir: Path, *extra: str) -> tuple[str, ...]:
  return (f'--config={DENSE[0]}', *DENSE[1:], f'--workdir={workdir}', *extra)


def error_line(result: subprocess.CompletedProcess) -> str:
  """The one line of a run stopped by a user error (exit 1, no traceback)."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('Error: ')]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def warnings_about(result: subprocess.CompletedProcess, text: str) -> list[str]:
  return [l for l in result.stderr.splitlines() if l.startswith('W') and text in l]


def damage(checkpoint: Path) -> None:
  """Overwrites 4 KB in the middle of the largest array file (bit rot)."""
  files = [p for p in (checkpoint / 'state').rglob('*') if p.is_file()]
  target = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 4096] = np.random.default_rng(0).bytes(4096)[:len(data) - middle]
  target.write_bytes(bytes(data))


def steps_in(directory: Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def reference(dense_reference) -> Path:
  """One uninterrupted run (tests/test_kill.py's): checkpoints 40, 60 and 70 kept."""
  assert steps_in(dense_reference / 'checkpoints') == ['40', '60', '70']
  return dense_reference


@pytest.fixture
def copy(reference, tmp_path) -> Path:
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  return workdir


def test_damaged_latest_checkpoint_resumes_from_the_previous_one(env, reference, copy):
  damage(copy / 'checkpoints' / '70')
  result = main_py(env, *dense(copy))
  assert result.returncode == 0, result.stderr[-3000:]
  warned = warnings_about(result, 'is damaged')
  assert len(warned) == 1 and f'{copy}/checkpoints/70 is damaged' in warned[0]
  assert f'moved to {copy}/checkpoints/damaged/70' in warned[0]
  assert 'Resuming from step 60 of 70.' in result.stderr
  assert steps_in(copy / 'checkpoints' / 'damaged') == ['70']
  assert_same_result(reference, copy)


def test_eval_takes_the_newest_intact_checkpoint_until_none_is_left(env, copy):
  damage(copy / 'checkpoints' / '70')
  result = main_py(env, f'--workdir={copy}', '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  assert len(warnings_about(result, 'checkpoints/70 is damaged')) == 1
  assert f'Checkpoint 60 ({copy}/checkpoints/60): test top-1' in result.stderr
  assert json.loads((copy / 'eval.json').read_text())['step'] == 60
  damage(copy / 'checkpoints' / '60')
  damage(copy / 'checkpoints' / '40')
  line = error_line(main_py(env, f'--workdir={copy}', '--mode=eval'))
  assert line.startswith(f'Error: No intact checkpoint left in {copy}/checkpoints:')
  assert steps_in(copy / 'checkpoints') == ['damaged']
  assert steps_in(copy / 'checkpoints' / 'damaged') == ['40', '60', '70']


def test_damaged_json_files_are_rewritten_or_refused(env, reference, copy):
  for name in ('summary.json', 'widths.json'):
    (copy / name).write_bytes(b'{"top1": 0.9\x00\x00')  # Torn.
  result = main_py(env, *dense(copy))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from step 70 of 70.' in result.stderr
  for name in ('summary.json', 'widths.json'):
    assert len(warnings_about(result, f'{copy}/{name} is damaged')) == 1
    assert (copy / 'damaged' / name).exists()
  assert (copy / 'widths.json').read_text() == (reference / 'widths.json').read_text()
  assert_same_result(reference, copy)

  (copy / 'config.json').write_text('{"model": ')
  line = error_line(main_py(env, f'--workdir={copy}', '--mode=eval'))
  assert f'{copy}/config.json was damaged' in line and '--config' in line
  checkpoints_before = steps_in(copy / 'checkpoints')
  line = error_line(main_py(env, *dense(copy)))
  assert 'no config.json (it was damaged: moved to damaged/)' in line
  assert '--overwrite' in line
  assert steps_in(copy / 'checkpoints') == checkpoints_before


def test_full_disk_stops_naming_the_checkpoint_and_the_rerun_finishes(env, reference,
                                                                     tmp_path):
  workdir = tmp_path / 'run'
  line = error_line(main_py(env, *dense(workdir),
                            **{errors.FULL_DISK_ENV: f'{workdir}/checkpoints/40'}))
  assert line.startswith(
      f'Error: No space left on the device while writing {workdir}/checkpoints/40;')
  assert latest(workdir / 'checkpoints')[0] == 20  # Intact, and still the latest.
  assert not (workdir / 'checkpoints' / '40').exists()
  result = main_py(env, *dense(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from step 20 of 70.' in result.stderr
  assert_same_result(reference, workdir)


@pytest.mark.slow
def test_full_disk_at_the_summary_keeps_it_unwritten_until_the_rerun(env, reference,
                                                                      tmp_path):
  workdir = tmp_path / 'run'
  summary = workdir / 'summary.json'
  line = error_line(main_py(env, *dense(workdir), **{errors.FULL_DISK_ENV: str(summary)}))
  assert line == (f'Error: No space left on the device while writing {summary}; what was '
                  'written before it is intact. Free some space (or use another '
                  '--workdir) and rerun the same command to resume.')
  assert not summary.exists() and not Path(f'{summary}.tmp').exists()
  assert latest(workdir / 'checkpoints')[0] == 70
  result = main_py(env, *dense(workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from step 70 of 70.' in result.stderr
  assert_same_result(reference, workdir)


@pytest.mark.slow  # About 2 minutes: the C2S2 reference of tests/test_kill.py.
def test_damaged_selection_checkpoint_redoes_the_last_move(env, dense_reference,
                                                           c2s2_reference, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(c2s2_reference, workdir)
  selection = workdir / 'selection' / 'checkpoints'
  last = max(int(s) for s in steps_in(selection) if s.isdigit())
  damage(selection / str(last))
  (workdir / 'widths.json').write_text('{"stage1_block0/conv1": ')
  result = Runner(env, workdir, C2S2, f'--config.init_from={dense_reference}').run()
  assert len([l for l in result.splitlines() if 'is damaged' in l]) == 2
  assert steps_in(selection / 'damaged') == [str(last)]
  assert_same_c2s2(c2s2_reference, workdir)
  # Evaluation without widths.json reads the compact widths from the kernels.
  (workdir / 'widths.json').write_text('{')
  result = main_py(env, f'--workdir={workdir}', '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  top1 = json.loads((c2s2_reference / 'summary.json').read_text())['top1']
  assert json.loads((workdir / 'eval.json').read_text())['top1'] == top1


# User errors: one line, exit 1, nothing written. ---------------------------------------

DENSE_FEW_STEPS = ('--config=configs/quickstart.py', '--config.num_epochs=1')
INVALID_VALUE = DENSE_FEW_STEPS + ('--config.optimizer.schedule=cosinus',)
# Cases whose message other tests check in-process run only with the slow tests.
USER_ERRORS = [
    pytest.param(INVALID_VALUE, ["config.optimizer.schedule='cosinus'; choose one of"],
                 id='invalid_value'),
    pytest.param(('--config=configs/quickstart_c2s2.py',
                  '--config.init_from={tmp}/no_dense_run'),
                 ['config.init_from={tmp}/no_dense_run: no checkpoint in '
                  '{tmp}/no_dense_run/checkpoints', 'Train that run first: python main.py '
                  '--config=', '--workdir={tmp}/no_dense_run'], id='missing_init_from'),
    pytest.param(('--config=configs/quickstart_c2s2.py',
                  '--config.channel_pruning.target_macs_ratio=0.01'),
                 ['config.channel_pruning.target_macs_ratio=0.01 cannot be met'],
                 id='impossible_c2s2'),
    pytest.param(DENSE_FEW_STEPS + ('--config.optimizer.learning_rate=1e6',),
                 ['Non-finite loss or gradients at step', 'stopped. No checkpoint was '
                  'written (none in {tmp}/run/checkpoints)'], id='nonfinite_loss'),
    pytest.param(DENSE_FEW_STEPS + ('--config.optimizer.learning_rat=0.1',),
                 ['names no config key', 'learning_rat', 'learning_rate'],
                 id='unknown_key', marks=pytest.mark.slow),
    pytest.param(('--config=configs/nope.py',), ['--config=configs/nope.py', 'No such file'],
                 id='missing_config_file', marks=pytest.mark.slow),
    pytest.param(DENSE_FEW_STEPS + ('--config.data.source=folder',
                                    '--config.data.path=/nonexistent/cifar'),
                 ["data.path='/nonexistent/cifar'"], id='missing_data',
                 marks=pytest.mark.slow),
    pytest.param(('--config=configs/quickstart_cci.py', '--config.sparsity.keep=9'),
                 ['sparsity.keep=9 must be in 1..group_size-1'], id='impossible_cci',
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize('args, expected', USER_ERRORS)
def test_user_errors_stop_in_one_line(env, args, expected, tmp_path):
  args = [a.format(tmp=tmp_path) for a in args]
  line = error_line(main_py(env, *args, f'--workdir={tmp_path}/run'))
  for text in expected:
    assert text.format(tmp=tmp_path) in line, line
  written = tmp_path / 'run' / 'checkpoints'
  assert not written.exists() or not os.listdir(written)


def test_the_traceback_is_kept_for_developers(env, tmp_path):
  result = main_py(env, *INVALID_VALUE, f'--workdir={tmp_path}',
                   **{errors.DEBUG_ENV: '1'})
  assert result.returncode == 1
  assert 'Traceback' in result.stderr and "config.optimizer.schedule='cosinus'" in (
      result.stderr)
