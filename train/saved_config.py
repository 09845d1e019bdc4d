"""The config a workdir records: written when a run starts, compared when it resumes.

A workdir holds the `config.json` of its experiment; `prepare` refuses (or, with
overwrite, clears) a workdir of another experiment; `load_config` reads it back with
the keys added to the project since at their defaults (`configs.base`).
"""

import ast
import glob
import os
import re
import shutil
from typing import Any, Mapping

import ml_collections

from configs import base
from train import errors
from train import workdir as workdir_lib
from train.workdir import CONFIG_FILE, DAMAGED_DIR, RUN_DIRS, RUN_FILES

_CONFIGS_DIR = os.path.dirname(os.path.abspath(base.__file__))
# Keys that change how a run is watched, not what it computes; they may differ
# between an interrupted run and its resumption.
RUN_CONTROL_KEYS = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
    'keep_checkpoints', 'eval_batch_size', 'data.cache_dir'})


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; sequences become lists for comparison."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = list(value) if isinstance(value, (tuple, list)) else value
  return flat


def with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A saved config with keys added to the project since it was saved at their defaults."""
  config = base.get_base_config()
  config.update(saved)
  return config.to_dict()


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Keys whose values differ, ignoring run-control keys.

  A key missing from `old` (added to the project after it was saved) counts as its
  default, so upgrading the code does not orphan a workdir.
  """
  a, b = flatten(with_defaults(old)), flatten(new)
  return sorted(k for k in a.keys() | b.keys()
                if k not in RUN_CONTROL_KEYS and a.get(k) != b.get(k))


def prepare(workdir: str, config: ml_collections.ConfigDict, overwrite: bool) -> None:
  """Creates `workdir` and records `config` in it.

  A workdir that holds checkpoints of a different experiment, or checkpoints without
  the `config.json` that says whose they are, is refused, unless `overwrite`, which
  deletes those checkpoints and results first.

  Raises:
    ValueError: the workdir belongs to another (or an unknown) experiment.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  if workdir_lib.has_checkpoints(workdir):
    saved = workdir_lib.read_record(path)
    if saved is not None:
      diff = config_differences(saved, config.to_dict())
      why = (f'checkpoints of another experiment (config keys that differ: '
             f'{", ".join(diff)})')
    else:
      diff = [CONFIG_FILE]
      damaged = os.path.exists(os.path.join(workdir, DAMAGED_DIR, CONFIG_FILE))
      why = (f'checkpoints but no {CONFIG_FILE}'
             f'{" (it was damaged: moved to " + DAMAGED_DIR + "/)" if damaged else ""}, '
             'so not known to be of this experiment')
    if diff and not overwrite:
      raise ValueError(
          f'Workdir {workdir} holds {why}. Use another --workdir, or pass '
          '--overwrite to delete its checkpoints and start again.')
    if diff:
      for name in RUN_DIRS:
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
      for name in RUN_FILES:
        if os.path.exists(os.path.join(workdir, name)):
          os.remove(os.path.join(workdir, name))
  workdir_lib.write_json(path, config.to_dict())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (for `--mode=eval` without --config)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: {workdir} is not a training workdir; pass --config.')
  saved = workdir_lib.read_record(path)
  if saved is None:
    raise errors.UserError(
        f'{path} was damaged (moved to {os.path.join(workdir, DAMAGED_DIR)}/); pass '
        'the --config it was trained with.')
  # Keys added to the project since the run started take their defaults.
  config = base.get_base_config()
  config.update(saved)
  config.lock()
  return config


def creating_command(workdir: str) -> str:
  """The documented command that trains `workdir` (configs/*.py docstrings), or a
  template of one."""
  wanted = os.path.abspath(workdir)
  for config_file in sorted(glob.glob(os.path.join(_CONFIGS_DIR, '*.py'))):
    with open(config_file) as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ''
    doc = doc.replace('\\\n', ' ')  # Continued lines.
    for command in re.findall(r'python main\.py[^\n]*', doc):
      command = ' '.join(command.split())
      found = re.search(r'--workdir=(\S+)', command)
      if found and os.path.abspath(found.group(1)) == wanted:
        return command
  return f'python main.py --config=<the config that trains it> --workdir={workdir}'
