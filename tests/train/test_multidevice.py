"""One code path for 1..N devices: 2 CPU devices give the single-device result."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.test_main import ROOT

SCRIPT = """
import json, sys
import jax, numpy as np
from tests.train.test_loop import final_state, tiny_config
from train import loop
config = tiny_config()
config.sparsity.method = sys.argv[2]
summary = loop.train_and_evaluate(config, sys.argv[1])
state = final_state(config, sys.argv[1])
print(json.dumps({'devices': jax.device_count(), 'loss': summary['loss'],
                  'kernel': np.asarray(state.params['head']['kernel']).tolist()}))
"""


def run(workdir, devices: int, method: str) -> dict:
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  result = subprocess.run([sys.executable, '-c', SCRIPT, str(workdir), method], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_two_devices_match_one_device(tmp_path):
  """CCI `dynamic` on 1 and 2 devices: same loss, same trained (masked) weights."""
  one = run(tmp_path / 'one', 1, 'dynamic')
  two = run(tmp_path / 'two', 2, 'dynamic')
  assert (one['devices'], two['devices']) == (1, 2)
  assert abs(one['loss'] - two['loss']) < 1e-3
  np.testing.assert_allclose(one['kernel'], two['kernel'], atol=1e-4)
