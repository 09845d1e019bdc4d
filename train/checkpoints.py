"""Orbax checkpoints of the train state plus a small JSON record per step.

Orbax writes each step into a temporary directory (`STEP.orbax-checkpoint-tmp*`) and
renames it to `STEP` when complete, so a run killed mid-write resumes from the last
complete checkpoint; the temporary directory is never taken for a checkpoint and is
deleted when the next run opens the directory.

The JSON record also holds a CRC-32 of every saved array. A checkpoint that cannot be
read, or whose arrays differ from their checksums (bit rot, a torn copy), is damaged:
`Checkpointer.restore_latest` reports it in one warning, moves it to `damaged/` beside
the steps (never deletes it) and falls back to the next older one.

For tests, `CCI_C2S2_KILL_DURING_SAVE=PATH[@MOMENT]` makes the process kill itself
with SIGKILL inside the save of the checkpoint whose final directory is `PATH`
(absolute, e.g. `/runs/a/checkpoints/40`): at `create` (the temporary directory just
made, nothing of the arrays written) or at `commit` (the default: every array and the
JSON record written, the rename not yet done).
"""

import os
import signal
from typing import Any, Callable

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from train import errors, integrity, models, saved_config
from train import workdir as workdir_lib

KILL_DURING_SAVE_ENV = 'CCI_C2S2_KILL_DURING_SAVE'
KILL_MOMENTS = ('create', 'commit')
CHECKSUMS_KEY = '_checksums'  # In the JSON record: array path -> CRC-32.


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


class _TestHooks(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic-rename save with the test hooks of `KILL_DURING_SAVE_ENV` and
  `errors.FULL_DISK_ENV`."""

  async def create(self):
    path = await super().create()
    _kill_if_targeted(self.get_final(), 'create')
    return path

  async def finalize(self, *args, **kwargs):
    _kill_if_targeted(self.get_final(), 'commit')
    errors.fail_if_disk_full_simulated(str(self.get_final()))
    return await super().finalize(*args, **kwargs)


class Checkpointer:
  """Saves and restores `TrainState` pytrees and a JSON `meta` record by step."""

  def __init__(self, directory: str, keep: int, read_only: bool = False):
    hook = {}
    if (os.environ.get(KILL_DURING_SAVE_ENV) or os.environ.get(errors.FULL_DISK_ENV)) and (
        not read_only):
      hook = {'temporary_path_class': _TestHooks}
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, **hook)
    self.directory = os.path.abspath(directory)
    self._saving = None  # The step of the save in flight, if any.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an (asynchronous) save of `state` and `meta` at `step`.

    Raises:
      errors.DiskFullError: this or the previous save ran out of space.
    """
    meta = {**meta, CHECKSUMS_KEY: integrity.checksums(state)}
    with self._naming_full_disk(self._saving):  # The previous save's background part.
      self._manager.wait_until_finished()
    with self._naming_full_disk(step):
      self._manager.save(
          step, force=True,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)))
    self._saving = step

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the checkpoint at `step` into the shapes and shardings given.

    Raises:
      ValueError: the checkpoint does not fit `abstract_state` (another model or
        other widths).
      integrity.DamagedCheckpointError: it cannot be read, or an array fails its
        checksum.
    """
    meta, crcs = self._read_meta(step)
    restored, failure = integrity.attempt(lambda: self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))))
    if failure:
      _, unreadable = integrity.attempt(lambda: _read_as_saved(self.directory, step))
      if unreadable:
        raise integrity.DamagedCheckpointError(self.path(step), unreadable.cause)
      raise ValueError(
          f'Checkpoint {self.path(step)} does not match the configured model '
          f'(another model, widths or method?): {failure.message}')
    integrity.verify(self.path(step), restored.state, crcs)
    return restored.state, meta

  def restore_latest(self, abstract_for: Callable[[dict[str, Any]], Any]
                     ) -> tuple[int, Any, dict[str, Any]] | None:
    """The newest intact checkpoint as (step, state, meta); None if there is none.

    Args:
      abstract_for: the abstract state (shapes, shardings) to restore, given the
        checkpoint's JSON record.

    Damaged checkpoints are reported in one warning each, moved to `damaged/` and
    skipped.

    Raises:
      errors.UserError: checkpoints were there, but every one is damaged.
    """
    damaged = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return (step, *self.restore(step, abstract_for(self._read_meta(step)[0])))
      except integrity.DamagedCheckpointError as e:
        damaged.append(self._move_aside(step, e))
    if damaged:
      raise errors.UserError(
          f'No intact checkpoint left in {self.directory}: every one was damaged and '
          f'moved to {os.path.dirname(damaged[0])}/. Start again with --overwrite (or '
          'another --workdir).')
    return None

  def meta(self, step: int) -> dict[str, Any]:
    """The JSON record saved with the checkpoint at `step` (arrays not read)."""
    return self._read_meta(step)[0]

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def wait(self) -> None:
    """Blocks until every pending save is complete on disk.

    Raises:
      errors.DiskFullError: the pending save ran out of space.
    """
    with self._naming_full_disk(self._saving):
      self._manager.wait_until_finished()

  def close(self) -> None:
    with self._naming_full_disk(self._saving):
      self._manager.close()

  def _naming_full_disk(self, step: int | None):
    return errors.naming_full_disk(self.path(step) if step is not None else self.directory)

  def _read_meta(self, step: int) -> tuple[dict[str, Any], dict[str, int]]:
    """The JSON record of `step` and the checksums saved in it ({} if none)."""
    restored, failure = integrity.attempt(lambda: self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())))
    if failure:
      raise integrity.DamagedCheckpointError(self.path(step), failure.cause)
    meta = dict(restored.meta)
    return meta, meta.pop(CHECKSUMS_KEY, None) or {}

  def _move_aside(self, step: int, error: integrity.DamagedCheckpointError) -> str:
    """Moves the damaged checkpoint at `step` to `damaged/`; returns where it went."""
    target = os.path.join(self.directory, workdir_lib.DAMAGED_DIR, str(step))
    suffix = 0
    while os.path.exists(target + (f'.{suffix}' if suffix else '')):
      suffix += 1
    target += f'.{suffix}' if suffix else ''
    logging.warning('%s; moved to %s, falling back to the previous checkpoint.', error,
                    target)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(self.path(step), target)
    self._manager.reload()
    return target


class NonFiniteError(errors.UserError):
  """The loss or gradient stopped being finite."""


def check_finite(state: Any, on_nonfinite: str, ckpt: Checkpointer) -> None:
  """Stops the run at the first non-finite step unless `on_nonfinite == 'skip'`.

  `state` has the fields `first_nonfinite_step` and `nonfinite_steps`.

  Raises:
    NonFiniteError: naming the step and the last good checkpoint (left intact), or
      saying that none was written.
  """
  bad = int(state.first_nonfinite_step)
  if bad < 0:
    return
  if on_nonfinite == 'skip':
    logging.warning('%d step(s) with non-finite loss or gradients were skipped '
                    '(first at step %d).', int(state.nonfinite_steps), bad)
    return
  ckpt.wait()
  last = ckpt.latest_step()
  kept = (f'The last good checkpoint is {ckpt.path(last)} (intact).' if last is not None
          else f'No checkpoint was written (none in {ckpt.directory}).')
  raise NonFiniteError(
      f'Non-finite loss or gradients at step {bad}; stopped. {kept} Lower the learning '
      'rate, or set --config.on_nonfinite=skip to skip such steps.')


def _read_as_saved(directory: str, step: int) -> Any:
  """Every array of the checkpoint at `step` in `directory`, as numpy."""
  manager = _read_only_manager(directory)
  try:
    return _restore_as_saved(manager, step)
  finally:
    manager.close()


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


def _restore_as_saved(manager: ocp.CheckpointManager, step: int,
                      item: Any = None) -> Any:
  """The arrays of `step` as numpy, in the tree they were saved as (or `item`'s part)."""
  tree = item if item is not None else manager.item_metadata(step).state.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=item, partial_restore=item is not None,
                                   restore_args=restore_args))).state


def _open_read_only(workdir: str, key: str) -> tuple[ocp.CheckpointManager, str, int]:
  """The checkpoints of `workdir` (named by `key`), their directory and latest step."""
  directory = os.path.join(os.path.abspath(workdir), workdir_lib.CHECKPOINT_DIR)
  step = None
  if os.path.isdir(directory):
    manager = _read_only_manager(directory)
    step = manager.latest_step()
    if step is not None:
      return manager, directory, step
    manager.close()
  raise errors.MissingInputError(
      f'{key}={workdir}: no checkpoint in {directory}. Train that run first: '
      f'{saved_config.creating_command(workdir)}')


def check_variables(workdir: str, like: Any, key: str = 'config.init_from') -> None:
  """Checks, reading metadata only, that `load_variables(workdir, like)` would fit.

  Raises:
    errors.MissingInputError: no checkpoint in `workdir` (names `key` and the command
      that makes one).
    ValueError: the checkpoint's variables differ from `like` (names the first path).
  """
  manager, directory, step = _open_read_only(workdir, key)
  try:
    _check_same_tree(f'{directory}/{step}', manager.item_metadata(step).state.tree,
                     _variables(like))
  finally:
    manager.close()


def load_variables(workdir: str, like: Any, key: str = 'config.init_from') -> Any:
  """Params and batch stats of the latest checkpoint in `workdir`, shaped as `like`.

  Starts a run from another run's weights (`config.init_from`), e.g. CCI fine-tuning
  from a dense model; the optimiser state is not taken.

  Raises:
    errors.MissingInputError: no checkpoint in `workdir`.
    errors.UserError: its latest checkpoint is damaged (another run's checkpoints are
      not moved: rerunning that run repairs them).
    ValueError: the checkpoint's variables differ from `like` (names the first path).
  """
  check_variables(workdir, like, key)
  return _read_variables(workdir, key, like)[1]


def save_variables(workdir: str, destination: str) -> int:
  """Writes the params and batch stats of `workdir`'s latest checkpoint (checksums
  verified) as the only checkpoint of `destination`, a folder that `load_variables`
  then reads like a workdir (no optimiser state: a published start is small).

  Returns:
    The checkpoint's step.

  Raises:
    errors.MissingInputError, errors.UserError: as `load_variables`.
  """
  step, variables = _read_variables(workdir, 'workdir')
  checkpointer = Checkpointer(os.path.join(destination, workdir_lib.CHECKPOINT_DIR), keep=1)
  checkpointer.save(step, variables, {'variables_of': os.path.abspath(workdir)})
  checkpointer.close()
  return step


def _read_variables(workdir: str, key: str, like: Any = None) -> tuple[int, dict[str, Any]]:
  """(step, params and batch stats) of the latest checkpoint in `workdir`, checksums
  verified, shaped as `like` or as saved; a damaged one is a UserError naming `key`."""
  manager, directory, step = _open_read_only(workdir, key)
  try:
    variables = _read_verified(manager, os.path.join(directory, str(step)), step,
                               lambda: _variables(like if like is not None else
                                                  manager.item_metadata(step).state.tree))
  except integrity.DamagedCheckpointError as e:
    raise errors.UserError(
        f'{key}={workdir}: {e}. Rerun the training of {workdir}: it moves the damaged '
        'checkpoint aside and resumes from its newest intact one.') from None
  finally:
    manager.close()
  return step, dict(variables)


def verified_step(directory: str) -> int:
  """The newest checkpoint of `directory` (a checkpoint folder), after checking every
  array of it against its checksums.

  Raises:
    errors.UserError: it cannot be read, or an array differs (names the checkpoint).
  """
  directory = os.path.abspath(directory)  # Orbax reads absolute paths only.
  manager = _read_only_manager(directory)
  try:
    step = manager.latest_step()
    if step is None:
      raise errors.MissingInputError(f'No complete checkpoint in {directory}.')
    _read_verified(manager, os.path.join(directory, str(step)), step)
  except integrity.DamagedCheckpointError as e:
    raise errors.UserError(str(e)) from None
  finally:
    manager.close()
  return step


def _read_verified(manager: ocp.CheckpointManager, path: str, step: int,
                   part: Callable[[], Any] = lambda: None) -> Any:
  """The arrays of `step` as saved (or the part of them `part()` gives), checked
  against its checksums.

  Raises:
    integrity.DamagedCheckpointError: unreadable, or an array differs.
  """
  meta, failure = integrity.attempt(lambda: manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
  if not failure:
    arrays, failure = integrity.attempt(lambda: _restore_as_saved(manager, step, part()))
  if failure:
    raise integrity.DamagedCheckpointError(path, failure.cause)
  integrity.verify(path, arrays, meta.get(CHECKSUMS_KEY) or {})
  return arrays


def saved_widths(directory: str, widths: dict[str, int]) -> dict[str, int] | None:
  """The output channels of the kernels named by `widths` in the newest readable
  checkpoint of `directory` (metadata only); None without one."""
  if not os.path.isdir(directory):
    return None
  manager = _read_only_manager(directory)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        params = manager.item_metadata(step).state.tree['params']
      except Exception:  # pylint: disable=broad-except
        continue  # Damaged: restore_latest moves it aside.
      return models.kernel_widths(params, widths)  # None: another model's.
  finally:
    manager.close()
  return None


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
