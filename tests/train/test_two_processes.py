"""Two JAX processes on this machine, for real: `python main.py` twice on 127.0.0.1.

Each process has one CPU device and the pair's cross-process collectives go through
gloo. The reference is one process with two forced host devices: the same global
batches, the same mesh shape and the same reduction order, so results are bit-exact.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import quickstart
from tests.test_main import ROOT
from train import data

HEARTBEAT_S = 10
TINY = ('--config.data.image_size=8', '--config.num_train_steps=12',
        '--config.checkpoint_every_steps=4', '--config.log_every_steps=4')

# main.py run as `__main__`, with every read of the training split (train is a Subset:
# the quickstart holds images out) and of the test split logged to $READ_LOG.
RECORDING_MAIN = """
import json, os, runpy, sys
import numpy as np
from train import data
log = open(os.environ['READ_LOG'], 'a')
def recording(kind, original):
  def get_batch(self, indices):
    log.write(json.dumps([kind, np.asarray(indices).tolist()]) + '\\n')
    log.flush()
    return original(self, indices)
  return get_batch
data.Subset.get_batch = recording('subset', data.Subset.get_batch)
data.ArraySource.get_batch = recording('array', data.ArraySource.get_batch)
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path('main.py', run_name='__main__')
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COORDINATOR', 'JAX_NUM_PROC', 'JAX_PROCESS_ID'))}
  env.pop('XLA_FLAGS', None)
  return {**env, **extra}


def launch_pair(workdir: Path, config: str, *args: str,
                read_logs: bool = False) -> list[subprocess.Popen]:
  """Starts the two processes of one job; their output goes to workdir/../log{i}."""
  port = free_port()
  processes = []
  for index in range(2):
    env = _env(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(index), JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
               CCI_C2S2_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_S),
               READ_LOG=str(workdir.parent / f'reads{index}.jsonl'))
    program = ['-c', RECORDING_MAIN] if read_logs else ['main.py']
    log = open(workdir.parent / f'log{index}.txt', 'a')
    processes.append(subprocess.Popen(
        [sys.executable, *program, f'--config={config}', f'--workdir={workdir}',
         *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def run_pair(workdir: Path, config: str, *args: str, read_logs: bool = False) -> None:
  processes = launch_pair(workdir, config, *args, read_logs=read_logs)
  codes = [p.wait(timeout=600) for p in processes]
  assert codes == [0, 0], (workdir.parent / 'log1.txt').read_text()[-3000:]


def run_one(workdir: Path, config: str, *args: str, devices: int = 2) -> None:
  env = _env(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run([sys.executable, 'main.py', f'--config={config}',
                           f'--workdir={workdir}', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


def saved_state(workdir: Path, step: int) -> list[np.ndarray]:
  """Every array of the train state saved at `step`, as numpy (any device count)."""
  path = workdir / 'checkpoints' / str(step) / 'state'
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return jax.tree.leaves(checkpointer.restore(path, restore_args=as_numpy))


def assert_same_state(a: Path, b: Path, step: int) -> None:
  left, right = saved_state(a, step), saved_state(b, step)
  assert len(left) == len(right) > 0
  for x, y in zip(left, right):
    np.testing.assert_array_equal(x, y)


def summary(workdir: Path) -> dict:
  return json.loads((workdir / 'summary.json').read_text())


def reads(tmp_path: Path, index: int, kind: str, length: int) -> list[list[int]]:
  lines = (tmp_path / f'reads{index}.jsonl').read_text().splitlines()
  return [ix for k, ix in map(json.loads, lines) if k == kind and len(ix) == length]


@pytest.fixture(scope='module')
def cci_runs(tmp_path_factory):
  """CCI `dynamic` quickstart (tiny): two processes, and one with two devices."""
  root = tmp_path_factory.mktemp('cci')
  (root / 'pair').mkdir()
  run_pair(root / 'pair' / 'work', 'configs/quickstart_cci.py', *TINY, read_logs=True)
  run_one(root / 'one', 'configs/quickstart_cci.py', *TINY)
  return root


def test_cci_pair_matches_one_process_with_two_devices_bit_exactly(cci_runs):
  pair, one = cci_runs / 'pair' / 'work', cci_runs / 'one'
  assert summary(pair)['hardware']['processes'] == 2
  assert summary(pair)['devices'] == summary(one)['devices'] == 2
  for key in ('loss', 'top1', 'density', 'macs'):
    assert summary(pair)[key] == summary(one)[key], key
  assert_same_state(pair, one, 12)


def test_pair_writes_checkpoints_metrics_and_summary_once(cci_runs):
  pair = cci_runs / 'pair' / 'work'
  assert sorted(os.listdir(pair / 'checkpoints')) == ['12', '4', '8']
  records = [json.loads(line) for line in (pair / 'metrics.jsonl').read_text().splitlines()]
  keys = [(r['step'], r['split']) for r in records]
  assert keys == [(4, 'train'), (8, 'train'), (12, 'train'), (12, 'test')]
  for index in range(2):
    assert 'Done: test top-1' in (cci_runs / 'pair' / f'log{index}.txt').read_text()


def test_each_process_reads_only_its_slice_of_every_global_batch(cci_runs):
  config = quickstart.get_config()
  config.data.image_size = 8
  train_size = len(data.load_dataset(config.data).train)
  half, eval_half = config.batch_size // 2, config.eval_batch_size // 2
  for index in range(2):
    train_reads = reads(cci_runs / 'pair', index, 'subset', half)
    assert len(train_reads) >= 12  # The prefetch thread may read ahead.
    for step, indices in enumerate(train_reads):
      batch = data.train_batch_indices(train_size, config.batch_size, config.seed, step)
      assert indices == batch[index * half:(index + 1) * half].tolist(), step
    eval_reads = reads(cci_runs / 'pair', index, 'array', eval_half)
    assert len(eval_reads) == 3  # 360 test digits in batches of 120, once.
    for batch, indices in enumerate(eval_reads):
      padded, _ = data.eval_batch_indices(360, config.eval_batch_size, batch)
      assert indices == padded[index * eval_half:(index + 1) * eval_half].tolist()


DENSE = ('--config.data.image_size=8', '--config.num_train_steps=60',
         '--config.checkpoint_every_steps=4', '--config.log_every_steps=4')


@pytest.mark.slow
def test_kill_of_one_process_stops_the_other_and_the_rerun_matches(tmp_path):
  """kill -9 of process 1 mid-run: process 0 exits (error) within the heartbeat
  timeout and some; both rerun from the last complete checkpoint to the result of an
  uninterrupted run. The killed run's checkpoint also resumes in one process."""
  run_one(tmp_path / 'one', 'configs/quickstart.py', *DENSE)
  work = tmp_path / 'work'
  processes = launch_pair(work, 'configs/quickstart.py', *DENSE)
  deadline = time.time() + 300
  while not (work / 'checkpoints' / '8').exists() and time.time() < deadline:
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGKILL)
  killed = time.time()
  code = processes[0].wait(timeout=HEARTBEAT_S + 60)
  assert code != 0
  assert time.time() - killed < HEARTBEAT_S + 60
  processes[1].wait()
  assert not (work / 'summary.json').exists()
  resumed_alone = tmp_path / 'alone'
  shutil.copytree(work, resumed_alone)
  run_pair(work, 'configs/quickstart.py', *DENSE)
  assert 'Resuming from step' in (tmp_path / 'log0.txt').read_text()
  assert_same_state(work, tmp_path / 'one', 60)
  assert summary(work)['loss'] == summary(tmp_path / 'one')['loss']
  run_one(resumed_alone, 'configs/quickstart.py', *DENSE)  # 2 processes -> 1.
  assert_same_state(resumed_alone, tmp_path / 'one', 60)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_with_two(tmp_path):
  """A single-process run killed inside its step-8 save continues as a pair."""
  args = (*DENSE[:1], '--config.num_train_steps=16', *DENSE[2:])
  run_one(tmp_path / 'one', 'configs/quickstart.py', *args)
  work = tmp_path / 'work'
  env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=2',
             CCI_C2S2_KILL_DURING_SAVE=str(work / 'checkpoints' / '12'))
  killed = subprocess.run([sys.executable, 'main.py', '--config=configs/quickstart.py',
                           f'--workdir={work}', *args], cwd=ROOT, env=env,
                          capture_output=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL
  run_pair(work, 'configs/quickstart.py', *args)
  assert 'Resuming from step 8' in (tmp_path / 'log0.txt').read_text()
  assert_same_state(work, tmp_path / 'one', 16)


@pytest.mark.slow
def test_c2s2_pair_matches_one_process_with_two_devices(tmp_path):
  dense = tmp_path / 'dense'
  run_one(dense, 'configs/quickstart.py', *TINY)
  args = (*TINY, f'--config.init_from={dense}',
          '--config.channel_pruning.phase1_epochs=0.1',
          '--config.channel_pruning.phase2_epochs=0.05',
          '--config.channel_pruning.latency_batch=8')
  run_pair(tmp_path / 'pair', 'configs/quickstart_c2s2.py', *args)
  run_one(tmp_path / 'one', 'configs/quickstart_c2s2.py', *args)
  pair, one = summary(tmp_path / 'pair'), summary(tmp_path / 'one')
  assert pair['channels'] == one['channels']
  assert (pair['loss'], pair['top1']) == (one['loss'], one['top1'])
