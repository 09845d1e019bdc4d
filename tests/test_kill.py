"""Kill -9 real runs of main.py, rerun the same command: nothing is lost.

Each test runs the quickstart configs (shortened by overrides) in subprocesses, kills
them with SIGKILL between steps (after a checkpoint appears on disk) or inside a
checkpoint write (the `CCI_C2S2_KILL_DURING_SAVE` hook of train/checkpoints.py, at a
deterministic moment), reruns the same command to the end and checks the final
checkpoints (parameters, batch statistics, optimiser state with CCI's masks, C2S2's
pruning state) bit for bit against one uninterrupted run with the same seed. The
uninterrupted runs are shared per module; a JAX compilation cache shared by the
subprocesses keeps the reruns short.
"""

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train import checkpoints, experiment

ROOT = Path(__file__).resolve().parent.parent
TMP_SUFFIX = '.orbax-checkpoint-tmp'
TIMEOUT_S = 600

# 2 epochs of the 1,137 training digits at batch 32: 70 steps, checkpoints every 20.
DENSE = ('configs/quickstart.py', '--config.num_epochs=2',
         '--config.checkpoint_every_steps=20')
CCI = ('configs/quickstart_cci.py', '--config.num_epochs=2',
       '--config.checkpoint_every_steps=20')
# Two units (stage1 and stage2 conv1), each phase 1 of 10 steps and phase 2 of 7;
# epsilon 1 accepts every prune, so the schedule is fixed: unit 0 runs steps 0-17,
# unit 1 starts at 17 (phase 1 to 27, phase 2 to 34), selection ends at 34; then a
# fine-tune of 21 steps. Selection checkpoints every 4 steps.
C2S2 = ('configs/quickstart_c2s2.py', '--config.num_epochs=0.6',
        '--config.checkpoint_every_steps=4',
        '--config.channel_pruning.exclude=stage3',
        '--config.channel_pruning.phase1_epochs=0.3',
        '--config.channel_pruning.phase2_epochs=0.2',
        '--config.channel_pruning.lambda_l1=2.0',
        '--config.channel_pruning.epsilon=1.0',
        '--config.channel_pruning.latency_batch=8')


@pytest.fixture(scope='module')
def env(tmp_path_factory) -> dict[str, str]:
  """The subprocesses' environment: a compilation cache (the suite's, if set by
  tests/conftest.py), no kill hook."""
  environ = {k: v for k, v in os.environ.items()
             if k != checkpoints.KILL_DURING_SAVE_ENV}
  cache = {'JAX_COMPILATION_CACHE_DIR': str(tmp_path_factory.mktemp('jax_cache')),
           'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
           'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  return {**cache, **environ,
          'CCI_C2S2_CACHE': str(tmp_path_factory.mktemp('data_cache'))}


class Runner:
  """Runs one command line of main.py on one workdir, whole or killed."""

  def __init__(self, env: dict[str, str], workdir: Path, config: tuple[str, ...],
               *extra: str):
    self.env, self.workdir = env, workdir
    self.args = [sys.executable, 'main.py', f'--config={config[0]}',
                 f'--workdir={workdir}', *config[1:], *extra]
    self.runs = 0

  def _start(self, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    self.runs += 1
    log = self.workdir.parent / f'{self.workdir.name}.{self.runs}.log'
    with open(log, 'w') as f:
      return subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=f,
                              stderr=subprocess.STDOUT), log

  def run(self) -> str:
    """Runs to the end; returns the log."""
    proc, log = self._start(self.env)
    proc.wait(TIMEOUT_S)
    assert proc.returncode == 0, log.read_text()[-4000:]
    return log.read_text()

  def kill_inside_save(self, checkpoint: str, moment: str) -> str:
    """Runs until the process kills itself inside the save of `checkpoint`."""
    final = self.workdir / checkpoint
    env = {**self.env, checkpoints.KILL_DURING_SAVE_ENV: f'{final}@{moment}'}
    proc, log = self._start(env)
    proc.wait(TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-4000:]
    assert not final.exists(), f'{final} was completed before the kill'
    assert list(final.parent.glob(final.name + TMP_SUFFIX + '*')), (
        f'no half-written {final}')
    return log.read_text()

  def kill_after(self, checkpoint: str) -> str:
    """Runs until `checkpoint` is complete on disk, then kills the process."""
    final = self.workdir / checkpoint
    proc, log = self._start(self.env)
    deadline = time.monotonic() + TIMEOUT_S
    while not final.exists():
      assert proc.poll() is None, (f'ended before {final} appeared:\n'
                                   f'{log.read_text()[-4000:]}')
      assert time.monotonic() < deadline, f'{final} never appeared'
      time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, 'the run ended before the kill'
    return log.read_text()


def latest(directory: Path) -> tuple[int, dict, dict]:
  """Step, state arrays (as numpy) and JSON record of the latest checkpoint."""
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})
  step = manager.latest_step()
  tree = manager.item_metadata(step).state.tree
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)),
      meta=ocp.args.JsonRestore()))
  manager.close()
  return step, restored.state, dict(restored.meta)


def assert_same_checkpoint(a: Path, b: Path) -> None:
  """The latest checkpoints of `a` and `b` hold the same step and the same bits."""
  step_a, state_a, _ = latest(a)
  step_b, state_b, _ = latest(b)
  assert step_a == step_b
  leaves_a = jax.tree_util.tree_leaves_with_path(state_a)
  leaves_b = jax.tree_util.tree_leaves_with_path(state_b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), f'{a}: {jax.tree_util.keystr(path)} differs'


def assert_same_result(reference: Path, resumed: Path) -> None:
  """Final checkpoint bit for bit, summary and logged steps as the uninterrupted run."""
  assert_same_checkpoint(reference / 'checkpoints', resumed / 'checkpoints')
  summaries = [json.loads((d / 'summary.json').read_text()) for d in (reference, resumed)]
  for key in ('top1', 'loss', 'steps', 'params', 'macs', 'nonfinite_steps_skipped'):
    assert summaries[0][key] == summaries[1][key], key
  logged = [[(r['step'], r['split']) for r in map(
      json.loads, (d / 'metrics.jsonl').read_text().splitlines())]
            for d in (reference, resumed)]
  assert logged[0] == logged[1], 'a logged step was lost or repeated'


def assert_same_c2s2(reference: Path, resumed: Path) -> None:
  """Selection's final pruning state and record, decisions, widths, fine-tune."""
  assert_same_checkpoint(reference / 'selection' / 'checkpoints',
                         resumed / 'selection' / 'checkpoints')
  assert (latest(reference / 'selection' / 'checkpoints')[2]
          == latest(resumed / 'selection' / 'checkpoints')[2])
  for name in ('c2s2.jsonl', 'widths.json'):
    assert (reference / name).read_text() == (resumed / name).read_text(), name
  summaries = [json.loads((d / 'summary.json').read_text()) for d in (reference, resumed)]
  assert summaries[0]['channels'] == summaries[1]['channels']
  assert_same_result(reference, resumed)


def resumed(log: str) -> list[str]:
  """The log lines of a rerun that name where it resumed (C2S2 selection, training)."""
  return [l.split('] ', 1)[1] for l in log.splitlines()
          if 'Resuming from step' in l or 'C2S2: resuming at' in l]


def resumed_step(log: str) -> int:
  lines = resumed(log)
  assert lines, 'the rerun started from scratch'
  return int(re.search(r'(?:Resuming from|resuming at) step (\d+)', lines[0]).group(1))


# Uninterrupted runs ------------------------------------------------------------------


@pytest.fixture(scope='module')
def dense_reference(env, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp('dense') / 'run'
  Runner(env, workdir, DENSE).run()
  return workdir


@pytest.fixture(scope='module')
def cci_reference(env, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp('cci') / 'run'
  Runner(env, workdir, CCI).run()
  return workdir


@pytest.fixture(scope='module')
def c2s2_reference(env, dense_reference, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp('c2s2') / 'run'
  Runner(env, workdir, C2S2, f'--config.init_from={dense_reference}').run()
  return workdir


# Kills -----------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['quickstart', 'quickstart_cci', 'quickstart_c2s2'])
def test_quickstart_configs_write_several_checkpoints(name, tmp_path):
  config = importlib.import_module(f'configs.{name}').get_config()
  total = experiment.build(config, str(tmp_path)).total_steps  # C2S2: its fine-tune.
  assert total // config.checkpoint_every_steps >= 3, (total, config.checkpoint_every_steps)


def test_dense_killed_inside_a_checkpoint_write_and_between_steps(env, dense_reference,
                                                                  tmp_path):
  run = Runner(env, tmp_path / 'run', DENSE)
  # Every array of step 40 written, not yet renamed: step 20 stays the latest.
  run.kill_inside_save('checkpoints/40', 'commit')
  assert latest(run.workdir / 'checkpoints')[0] == 20
  # The rerun resumes from 20 and is killed between steps, once step 60 is on disk.
  assert resumed(run.kill_after('checkpoints/60')) == ['Resuming from step 20 of 70.']
  assert resumed_step(run.run()) >= 60
  assert not list((run.workdir / 'checkpoints').glob('*' + TMP_SUFFIX + '*'))
  assert_same_result(dense_reference, run.workdir)


def test_cci_killed_as_a_checkpoint_write_begins(env, cci_reference, tmp_path):
  run = Runner(env, tmp_path / 'run', CCI)
  run.kill_inside_save('checkpoints/40', 'create')  # Nothing of step 40 written yet.
  assert resumed(run.run()) == ['Resuming from step 20 of 70.']
  assert_same_result(cci_reference, run.workdir)  # Masks live in the optimiser state.


def test_c2s2_killed_inside_a_phase_resumes_inside_it(env, dense_reference,
                                                      c2s2_reference, tmp_path):
  run = Runner(env, tmp_path / 'run', C2S2, f'--config.init_from={dense_reference}')
  # Unit 1 (after unit 0's surgery), phase 1, steps 17-27: killed writing step 24.
  run.kill_inside_save('selection/checkpoints/24', 'commit')
  assert resumed(run.run()) == ['C2S2: resuming at step 20 (unit 1, phase1).']
  assert_same_c2s2(c2s2_reference, run.workdir)


@pytest.mark.slow
def test_c2s2_killed_at_every_kind_of_point(env, dense_reference, c2s2_reference,
                                           tmp_path):
  run = Runner(env, tmp_path / 'run', C2S2, f'--config.init_from={dense_reference}')
  # Unit 1's start (after unit 0's surgery at step 17) begins to be saved.
  run.kill_inside_save('selection/unit_start/17', 'create')
  # The rerun resumes in unit 0's phase 2, redoes its check and surgery, and is
  # killed between steps of unit 1's phase 2 (27-34), once step 28 is on disk.
  log = run.kill_after('selection/checkpoints/28')
  assert resumed(log) == ['C2S2: resuming at step 16 (unit 0, phase2).']
  # The rerun finishes selection and is killed writing the fine-tune's step 8.
  log = run.kill_inside_save('checkpoints/8', 'commit')
  assert resumed_step(log) >= 28 and 'C2S2' in resumed(log)[0]
  # Killed after the fine-tune's last checkpoint, before the summary.
  assert resumed(run.kill_after('checkpoints/21'))[1:] == ['Resuming from step 4 of 21.']
  assert not (run.workdir / 'summary.json').exists()
  assert resumed(run.run())[1:] == ['Resuming from step 21 of 21.']
  assert_same_c2s2(c2s2_reference, run.workdir)


@pytest.mark.slow
def test_dense_killed_in_the_last_checkpoint_write_and_before_the_summary(
    env, dense_reference, tmp_path):
  run = Runner(env, tmp_path / 'run', DENSE)
  run.kill_inside_save('checkpoints/70', 'commit')
  assert resumed(run.kill_after('checkpoints/70')) == ['Resuming from step 60 of 70.']
  assert not (run.workdir / 'summary.json').exists()
  assert resumed(run.run()) == ['Resuming from step 70 of 70.']
  assert_same_result(dense_reference, run.workdir)
