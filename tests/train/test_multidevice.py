"""One code path for 1..N devices: 4 CPU devices give the single-device result."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_main import ROOT

SCRIPT = """
import json, sys
import jax, numpy as np
import cci
from tests.train.test_loop import final_state, tiny_config
from train import dispatch
config = tiny_config()
config.sparsity.method = sys.argv[2]
summary = dispatch.train_and_evaluate(config, sys.argv[1])
state = final_state(config, sys.argv[1])
masks = cci.find_state(state.opt_state).masks['stage1_block0']['conv1']['kernel']
shards = [np.asarray(s.data) for s in masks.addressable_shards]
print(json.dumps({'devices': jax.device_count(), 'loss': summary['loss'],
                  'masks_identical': all((s == shards[0]).all() for s in shards),
                  'mask': shards[0].tolist(),
                  'kernel': np.asarray(state.params['head']['kernel']).tolist()}))
"""

# Five phase-1 steps of C2S2 selection on the first unit, from a short dense run (made
# by the first call, on its number of devices, and shared).
C2S2_SCRIPT = """
import json, os, sys
import jax, numpy as np
from configs import c2s2_schedules
from tests.train.test_loop import tiny_config
from train import c2s2_setup, checkpoints, data, dispatch, model_setup, steps
dense = os.path.join(os.path.dirname(sys.argv[1]), 'dense')
if not os.path.exists(os.path.join(dense, 'summary.json')):
  dispatch.train_and_evaluate(tiny_config(), dense)
config = tiny_config()
c2s2_schedules.apply(config, dense)
config.channel_pruning.lambda_l1 = 2.0
setup = c2s2_setup.make_setup(config)
model = model_setup.build_model(config, setup.dataset.num_classes, setup.original_widths)
graph = model_setup.trace_graph(model, setup.dataset.image_shape)
variables = checkpoints.load_variables(
    dense, model_setup.abstract_variables(model, setup.dataset.image_shape))
state = jax.device_put(c2s2_setup.initial_state(setup, graph, variables),
                       steps.replicated(setup.mesh))
state = c2s2_setup.with_unit(state, graph, setup.units[0])
step = c2s2_setup.make_train_step(setup, model, graph, 'phase1', setup.lambdas)
batches = data.train_batches(setup.dataset.train, batch_size=config.batch_size, seed=0,
                             start_step=0, crop_padding=1, flip=True)
for _ in range(5):
  state, values = step(state, steps.to_global(next(batches), setup.mesh))
scales = state.params[c2s2_setup.SCALES_KEY][setup.units[0][0]]
shards = [np.asarray(s.data) for s in scales.addressable_shards]
result = {'devices': jax.device_count(), 'loss': float(values['loss']),
          'scales_identical': all((s == shards[0]).all() for s in shards),
          'scales': shards[0].tolist()}
if sys.argv[2] == 'driver':  # The whole driver: selection, surgery, fine-tune.
  cp = config.channel_pruning
  cp.phase1_epochs, cp.phase2_epochs, cp.epsilon, cp.latency_batch = 0.1, 0.05, 1.0, 8
  summary = dispatch.train_and_evaluate(config, sys.argv[1] + '/c2s2')
  result['kept'] = {k: v['kept'] for k, v in summary['channels'].items()}
  result['original'] = {k: v['original'] for k, v in summary['channels'].items()}
print(json.dumps(result))
"""


def run(workdir, devices: int, method: str, script: str = SCRIPT) -> dict:
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  result = subprocess.run([sys.executable, '-c', script, str(workdir), method], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_four_devices_match_one_device(tmp_path):
  """CCI `dynamic` on 1 and 4 devices: same loss, masks and trained (masked) weights."""
  one = run(tmp_path / 'one', 1, 'dynamic')
  four = run(tmp_path / 'four', 4, 'dynamic')
  assert (one['devices'], four['devices']) == (1, 4)
  assert four['masks_identical']
  assert abs(one['loss'] - four['loss']) < 1e-3
  np.testing.assert_array_equal(one['mask'], four['mask'])
  np.testing.assert_allclose(one['kernel'], four['kernel'], atol=1e-4)


def test_c2s2_scales_are_identical_on_four_devices_and_match_one(tmp_path):
  one = run(tmp_path / 'one', 1, '', C2S2_SCRIPT)
  four = run(tmp_path / 'four', 4, '', C2S2_SCRIPT)
  assert four['devices'] == 4 and four['scales_identical']
  assert abs(one['loss'] - four['loss']) < 1e-3
  np.testing.assert_allclose(one['scales'], four['scales'], atol=1e-4)


@pytest.mark.slow
def test_c2s2_driver_runs_whole_on_four_devices(tmp_path):
  four = run(tmp_path / 'four', 4, 'driver', C2S2_SCRIPT)
  assert four['scales_identical']
  assert four['kept'] != four['original']  # Selection, surgery and fine-tune on 4.
