"""Orbax checkpoints of the train state plus a small JSON record per step.

Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-write resumes from the last complete checkpoint.
"""

import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores `TrainState` pytrees and a JSON `meta` record by step."""

  def __init__(self, directory: str, keep: int, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an (asynchronous) save of `state` and `meta` at `step`."""
    self._manager.save(
        step, force=True,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the checkpoint at `step` into the shapes and shardings given.

    Raises:
      ValueError: the checkpoint does not fit `abstract_state` (another model or
        other widths).
    """
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f'Checkpoint {self.directory}/{step} does not match the configured model '
          f'(another model, widths or method?): {e}') from e
    return restored.state, dict(restored.meta)

  def meta(self, step: int) -> dict[str, Any]:
    """The JSON record saved with the checkpoint at `step` (arrays not read)."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored.meta)

  def wait(self) -> None:
    """Blocks until every pending save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class NonFiniteError(RuntimeError):
  """The loss or gradient stopped being finite."""


def check_finite(state: Any, on_nonfinite: str, ckpt: Checkpointer) -> None:
  """Stops the run at the first non-finite step unless `on_nonfinite == 'skip'`.

  `state` has the fields `first_nonfinite_step` and `nonfinite_steps`.

  Raises:
    NonFiniteError: naming the step and the last good checkpoint (left intact).
  """
  bad = int(state.first_nonfinite_step)
  if bad < 0:
    return
  if on_nonfinite == 'skip':
    logging.warning('%d step(s) with non-finite loss or gradients were skipped '
                    '(first at step %d).', int(state.nonfinite_steps), bad)
    return
  ckpt.wait()
  raise NonFiniteError(
      f'Non-finite loss or gradients at step {bad}; stopped. The last good '
      f'checkpoint is step {ckpt.latest_step()} in {ckpt.directory} (intact). '
      'Lower the learning rate, or set --config.on_nonfinite=skip to skip such '
      'steps.')


def load_variables(workdir: str, like: Any) -> Any:
  """Params and batch stats of the latest checkpoint in `workdir`, shaped as `like`.

  Starts a run from another run's weights (`config.init_from`), e.g. CCI fine-tuning
  from a dense model; the optimiser state is not taken.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    ValueError: the checkpoint's variables differ from `like` (names the first path).
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{workdir!r} has no checkpoints/ directory.')
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'{workdir!r}: no checkpoint in {directory}.')
  saved = manager.item_metadata(step).state.tree
  expected = {'params': like['params'], 'batch_stats': like.get('batch_stats', {})}
  _check_same_tree(workdir, {k: saved[k] for k in expected}, expected)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=expected, partial_restore=True,
          restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                    expected))))
  manager.close()
  return dict(restored.state)


def _check_same_tree(workdir: str, saved: Any, expected: Any) -> None:
  """Raises ValueError naming the first parameter whose name or shape differs."""
  saved_paths = {jax.tree_util.keystr(p): tuple(l.shape) for p, l in
                 jax.tree_util.tree_leaves_with_path(saved)}
  for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
    key = jax.tree_util.keystr(path)
    if saved_paths.get(key) != tuple(leaf.shape):
      raise ValueError(
          f'{workdir!r}: {key} has shape {saved_paths.get(key)} in '
          f'the checkpoint but {tuple(leaf.shape)} in this model (another model or '
          'widths?).')


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shape/dtype/sharding skeleton of `tree`, for `Checkpointer.restore`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
