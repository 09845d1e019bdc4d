"""Our dense ResNet training step beside PyTorch's, and beside the machine's matmul peak.

  pip install -r requirements-bench.txt        # PyTorch's CPU build (optional)
  python -m benchmarks --only=pytorch_reference

Per batch (32, 64, 128): our step (train/steps.py) and PyTorch's
(benchmarks/torch_worker.py: the same ResNet-20 with option-A shortcuts, channels_last,
SGD with Nesterov momentum, random data, in a subprocess) timed in alternating rounds on
the same cores; ratio ours / PyTorch's, target 1.0 at batch 128 and at the cpu preset's
batch 64. Then the float32 matmul peak, the fastest 2048x2048 matmul of XLA (jitted),
numpy and PyTorch, against our step's FLOP/s at batch 128 (3 x 2 x forward MACs per
image: forward, input and weight gradients): ratio peak / ours, target 2.0 (at least
half the peak). Without PyTorch, its entries say so and carry no ratio.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from train import models
from train.models import stats

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'torch_worker.py')
NOT_INSTALLED = 'pytorch not installed (pip install -r requirements-bench.txt)'
# model, {batch: target}, rounds, steps per round
FULL = ('resnet20', {32: None, 64: 1.0, 128: 1.0}, 4, 3)
SMOKE = ('resnet8', {8: None}, 2, 1)
PEAK_TARGET = 2.0  # Peak FLOP/s over ours: at least half the peak.


class TorchWorker:
  """benchmarks/torch_worker.py in a subprocess: timed PyTorch work on request."""

  def __init__(self, model_name: str, batch_size: int):
    self.process = subprocess.Popen(
        [sys.executable, WORKER, model_name, str(batch_size)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    ready = self.process.stdout.readline().split()
    if not ready or ready[0] != 'ready':
      raise RuntimeError(f'{WORKER} did not start (exit code {self.process.poll()}).')
    self.version = ready[1]

  def seconds(self, work: str, count: int) -> list[float]:
    self.process.stdin.write(f'{work} {count}\n')
    self.process.stdin.flush()
    return json.loads(self.process.stdout.readline())

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait(timeout=60)


def _time(fn: Callable[[], Any], count: int) -> list[float]:
  seconds = []
  for _ in range(count):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - start)
  return seconds


def side_by_side(ours: Callable[[], Any], worker: TorchWorker | None, work: str,
                 rounds: int, per_round: int) -> tuple[float, float | None]:
  """Median seconds of ours and of the worker's `work`, in alternating rounds."""
  jax.block_until_ready(ours())  # Compiled and warm.
  mine, theirs = [], []
  for round_index in range(rounds):
    turns = [lambda: mine.extend(_time(ours, per_round))]
    if worker:
      turns.append(lambda: theirs.extend(worker.seconds(work, per_round)))
    for turn in turns[round_index % 2:] + turns[:round_index % 2]:
      turn()
  return statistics.median(mine), statistics.median(theirs) if theirs else None


def matmul_peak(worker: TorchWorker | None, repeats: int) -> tuple[float, str]:
  """The fastest float32 2048x2048 matmul's FLOP/s, and whose it is."""
  a = np.random.default_rng(0).standard_normal((2048, 2048), np.float32)
  xla = jax.jit(lambda x: x @ x)
  device_a = jnp.asarray(a)
  candidates = {'xla': lambda: xla(device_a), 'numpy': lambda: a @ a}
  seconds = {}
  for name, fn in candidates.items():
    fn()
    seconds[name] = min(_time(fn, repeats))
  if worker:
    seconds['pytorch'] = min(worker.seconds('matmul', repeats))
  best = min(seconds, key=seconds.get)
  return 2 * 2048 ** 3 / seconds[best], best


def step_flops(model_name: str, batch_size: int) -> float:
  """3 x 2 x forward MACs of a training step (forward, input and weight gradients)."""
  model = models.build_model(model_name, 10)
  variables = common.init_variables(model, 32)
  macs = stats.total_macs(stats.layer_stats(model, variables, (1, 32, 32, 3)))
  return 6.0 * macs * batch_size


def measure(smoke: bool) -> list[common.Entry]:
  """Per batch: ours vs PyTorch; then the matmul peak vs our largest batch's step."""
  model_name, batches, rounds, per_round = SMOKE if smoke else FULL
  installed = importlib.util.find_spec('torch') is not None
  entries, worker = [], None
  for batch_size, target in batches.items():
    worker = TorchWorker(model_name, batch_size) if installed else None
    try:
      ours, theirs = side_by_side(common.train_step(model_name, batch_size), worker,
                                  'step', rounds, per_round)
      if batch_size == max(batches):
        peak, source = matmul_peak(worker, 3 if smoke else 10)
    finally:
      if worker:
        worker.close()
    name = f'pytorch_reference/{model_name}/b{batch_size}'
    extra = {'images_per_s': batch_size / ours}
    if theirs is None:
      entries.append({'name': name, 'seconds': ours, 'baseline': NOT_INSTALLED,
                      'baseline_seconds': None, 'ratio': None, 'target': target, **extra})
    else:
      entries.append(common.entry(
          name, ours, f'pytorch {worker.version} {model_name} b{batch_size}', theirs,
          target, pytorch_images_per_s=batch_size / theirs, **extra))
  flops = step_flops(model_name, batch_size)
  entries.append(common.entry(
      f'matmul_peak/{model_name}/b{batch_size}', ours, f'{flops:.3g} FLOPs at the '
      f'{source} matmul peak', flops / peak, None if smoke else PEAK_TARGET,
      step_gflops=flops / ours / 1e9, peak_gflops=peak / 1e9, peak_source=source,
      fraction_of_peak=flops / ours / peak))
  return entries
