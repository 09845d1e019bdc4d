"""The layering of docs/architecture.md: methods below the loop, files named once."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(path: str) -> set[str]:
  """Dotted names a module imports (`from train import loop` gives 'train.loop')."""
  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{a.name}' for a in node.names)
  return names


@pytest.mark.parametrize('path,forbidden', [
    ('train/loop.py', ('train.c2s2_driver', 'train.c2s2_setup', 'train.channel_baselines',
                       'train.dispatch')),
    ('train/runner.py', ('train.c2s2_driver', 'train.channel_baselines', 'train.loop')),
    ('train/steps.py', ('train.c2s2_driver', 'train.channel_baselines', 'train.loop')),
    ('train/channel_baselines.py', ('train.c2s2_driver', 'train.c2s2_setup')),
    ('train/model_setup.py', ('train.c2s2_driver', 'train.channel_baselines')),
    ('train/nnx_selection.py', ('train.c2s2_driver',)),
    ('train/workdir.py', ('configs', 'configs.base')),
])
def test_module_does_not_import(path, forbidden):
  imported = imported_modules(path)
  assert not imported & set(forbidden), imported & set(forbidden)


@pytest.mark.parametrize('package', ['c2s2', 'cci'])
def test_methods_import_only_jax_flax_optax_and_themselves(package):
  allowed = re.compile(rf'^({package}|jax|flax|optax|numpy|absl|collections|dataclasses|'
                       r'typing|functools|math|itertools|re|types|contextlib|string|'
                       r'threading|warnings|enum|abc|importlib|inspect|__future__)(\.|$)')
  for name in sorted(os.listdir(os.path.join(ROOT, package))):
    if name.endswith('.py'):
      other = {m for m in imported_modules(f'{package}/{name}') if not allowed.match(m)}
      assert not other, (name, other)


def test_workdir_file_names_are_not_retyped():
  """Each workdir file name is a literal only in train/workdir.py."""
  names = ('metrics.jsonl', 'summary.json', 'eval.json', 'widths.json', 'layers.json',
           'efficiency.json', 'c2s2.jsonl', 'config.json', 'reproduce_attempts.json')
  for directory in ('train', 'c2s2', 'cci'):
    for name in sorted(os.listdir(os.path.join(ROOT, directory))):
      if name.endswith('.py') and f'{directory}/{name}' != 'train/workdir.py':
        with open(os.path.join(ROOT, directory, name)) as f:
          text = f.read()
        assert not [n for n in names if f"'{n}'" in text], name
