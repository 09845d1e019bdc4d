"""Every experiment config loads, validates, and documents its command first."""

import importlib
import os
import re

import pytest

from tests.test_main import ROOT
from train import experiment

CONFIG_DIR = os.path.join(ROOT, 'configs')
HELPERS = {'base', 'cci_schedules', 'c2s2_schedules', 'baseline_schedules', '__init__'}
NAMES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
               if f.endswith('.py') and f[:-3] not in HELPERS)


@pytest.mark.parametrize('name', NAMES)
def test_config_loads_and_its_docstring_starts_with_its_command(name):
  module = importlib.import_module(f'configs.{name}')
  first_line = module.__doc__.strip().splitlines()[0]
  assert first_line and 'Expect' in module.__doc__, name
  command = re.search(r'python main\.py --config=configs/(\w+)\.py', module.__doc__)
  assert command and command.group(1) == name, name
  config = module.get_config()
  config.lock()
  experiment.validate(config)
  assert 'MEASURE' not in module.__doc__, f'{name}: fill in the measured figures'


def test_cci_configs_take_the_algorithm_as_argument():
  module = importlib.import_module('configs.resnet20_cci_cpu')
  for method in ('oneshot', 'gradual', 'dynamic'):
    config = module.get_config(method)
    assert config.sparsity.method == method
    assert bool(config.init_from) == (method != 'dynamic')


@pytest.mark.parametrize('name', NAMES)
def test_configs_derive_only_from_dense_configs(name):
  """A method config builds on its architecture's dense config, never on another
  method's: editing a CCI config must not change a C2S2 or baseline config."""
  source = open(os.path.join(CONFIG_DIR, f'{name}.py')).read()
  imported = re.findall(r'^from configs import (.+)$', source, re.MULTILINE)
  bases = {n.strip() for line in imported for n in line.split(',')} - HELPERS
  for base_name in bases:
    config = importlib.import_module(f'configs.{base_name}').get_config()
    assert config.sparsity.method == 'none', (name, base_name)
    assert config.channel_pruning.method == 'none', (name, base_name)
    assert not config.init_from, (name, base_name)
