"""Orbax checkpoints of the train state plus a small JSON record per step.

Orbax writes each step into a temporary directory (`STEP.orbax-checkpoint-tmp*`) and
renames it to `STEP` when complete, so a run killed mid-write resumes from the last
complete checkpoint; the temporary directory is never taken for a checkpoint and is
deleted when the next run opens the directory.

For tests, `CCI_C2S2_KILL_DURING_SAVE=PATH[@MOMENT]` makes the process kill itself
with SIGKILL inside the save of the checkpoint whose final directory is `PATH`
(absolute, e.g. `/runs/a/checkpoints/40`): at `create` (the temporary directory just
made, nothing of the arrays written) or at `commit` (the default: every array and the
JSON record written, the rename not yet done).
"""

import os
import signal
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

KILL_DURING_SAVE_ENV = 'CCI_C2S2_KILL_DURING_SAVE'
KILL_MOMENTS = ('create', 'commit')


def _kill_if_targeted(final: Any, moment: str) -> None:
  """SIGKILLs this process if `KILL_DURING_SAVE_ENV` names `final` at `moment`."""
  target = os.environ.get(KILL_DURING_SAVE_ENV, '')
  path, _, when = target.partition('@')
  if when not in ('', *KILL_MOMENTS):
    raise ValueError(f'{KILL_DURING_SAVE_ENV}={target!r}: the moment after @ must be '
                     f'one of {KILL_MOMENTS}.')
  if path and os.path.abspath(path) == os.path.abspath(str(final)) and (
      (when or 'commit') == moment):
    logging.warning('%s: killing this process inside the save of %s (%s).',
                    KILL_DURING_SAVE_ENV, final, moment)
    logging.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillDuringSave(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic-rename save with the test hook of `KILL_DURING_SAVE_ENV`."""

  async def create(self):
    path = await super().create()
    _kill_if_targeted(self.get_final(), 'create')
    return path

  async def finalize(self, *args, **kwargs):
    _kill_if_targeted(self.get_final(), 'commit')
    return await super().finalize(*args, **kwargs)


class Checkpointer:
  """Saves and restores `TrainState` pytrees and a JSON `meta` record by step."""

  def __init__(self, directory: str, keep: int, read_only: bool = False):
    hook = {}
    if os.environ.get(KILL_DURING_SAVE_ENV) and not read_only:
      hook = {'temporary_path_class': _KillDuringSave}
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, **hook)
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


def _open_read_only(workdir: str) -> tuple[ocp.CheckpointManager, str, int]:
  """The checkpoints of `workdir`, their directory and latest step."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{workdir!r} has no checkpoints/ directory.')
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})
  step = manager.latest_step()
  if step is None:
    manager.close()
    raise FileNotFoundError(f'{workdir!r}: no checkpoint in {directory}.')
  return manager, directory, step


def check_variables(workdir: str, like: Any) -> None:
  """Checks, reading metadata only, that `load_variables(workdir, like)` would fit.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    ValueError: the checkpoint's variables differ from `like` (names the first path).
  """
  manager, directory, step = _open_read_only(workdir)
  try:
    _check_same_tree(f'{directory}/{step}', manager.item_metadata(step).state.tree,
                     _variables(like))
  finally:
    manager.close()


def load_variables(workdir: str, like: Any) -> Any:
  """Params and batch stats of the latest checkpoint in `workdir`, shaped as `like`.

  Starts a run from another run's weights (`config.init_from`), e.g. CCI fine-tuning
  from a dense model; the optimiser state is not taken.

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
    ValueError: the checkpoint's variables differ from `like` (names the first path).
  """
  check_variables(workdir, like)
  manager, _, step = _open_read_only(workdir)
  expected = _variables(like)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=expected, partial_restore=True,
          restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                    expected))))
  manager.close()
  return dict(restored.state)


def _variables(tree: Any) -> dict[str, Any]:
  return {'params': tree['params'], 'batch_stats': tree.get('batch_stats', {})}


def _check_same_tree(checkpoint: str, saved: Any, expected: Any) -> None:
  """Raises ValueError naming the first variable whose name or shape differs.

  Variables of the checkpoint that the model lacks count too: a deeper model's
  checkpoint holds every variable of a shallower one with the same shapes.
  """
  def shapes(tree):
    return {jax.tree_util.keystr(p): tuple(l.shape)
            for p, l in jax.tree_util.tree_leaves_with_path(tree)}

  saved = {k: saved.get(k, {}) for k in expected}  # Its optimiser state is not read.
  saved_shapes, expected_shapes = shapes(saved), shapes(expected)
  for key, shape in expected_shapes.items():
    if saved_shapes.get(key) != shape:
      found = ('is missing from' if key not in saved_shapes
               else f'has shape {saved_shapes[key]} in')
      raise ValueError(
          f'{key} {found} the checkpoint {checkpoint} but has shape {shape} in this '
          'model (another model or widths?).')
  extra = sorted(saved_shapes.keys() - expected_shapes.keys())
  if extra:
    raise ValueError(
        f'The checkpoint {checkpoint} holds {len(extra)} variable(s) this model lacks, '
        f'e.g. {extra[0]} (another model or widths?).')


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shape/dtype/sharding skeleton of `tree`, for `Checkpointer.restore`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
