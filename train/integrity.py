"""Whether a checkpoint is intact: checksums of its arrays, and why a read failed.

Orbax does not checksum array data: a few bytes overwritten in a compressed chunk can
restore without an error as other numbers. The checkpointer therefore saves a CRC-32 of
every array in the checkpoint's JSON record and compares after restoring.
"""

import dataclasses
import gc
import sys
import zlib
from typing import Any, Callable

import jax
import numpy as np

from train import errors


class DamagedCheckpointError(errors.UserError):
  """A checkpoint that cannot be read, or whose arrays fail their checksums."""

  def __init__(self, path: str, why: str):
    super().__init__(f'Checkpoint {path} is damaged ({why})')
    self.path = path


@dataclasses.dataclass
class Failure:
  message: str  # The exception raised (its first 1,000 characters).
  cause: str  # The first line of the innermost exception it was raised from.


def attempt(read: Callable[[], Any]) -> tuple[Any, Failure | None]:
  """`read()` and None, or None and why it failed.

  A failed orbax read leaves coroutines that print tracebacks ("Exception ignored")
  when they are collected; they are collected here, quietly, once the failure is
  dropped.
  """
  try:
    return read(), None
  except Exception as e:  # pylint: disable=broad-except
    innermost = e
    for _ in range(20):  # Chains are short; this bounds a cyclic one.
      innermost = innermost.__cause__ or innermost.__context__ or innermost
    failure = Failure(str(e)[:1000], _first_line(innermost))
  hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
  try:
    gc.collect()
  finally:
    sys.unraisablehook = hook
  return None, failure


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:300]


def _leaf_name(path: tuple[Any, ...]) -> str:
  """'params/conv/kernel' for a dataclass field, dict key or sequence index path."""
  parts = []
  for key in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  return '/'.join(parts)


def _host(leaf: Any) -> np.ndarray:
  if isinstance(leaf, jax.Array):
    leaf = leaf.addressable_data(0)  # The state is replicated: one copy is all of it.
  return np.ascontiguousarray(np.asarray(leaf))


def checksums(tree: Any) -> dict[str, int]:
  """CRC-32 of the bytes of every array of `tree`, by '/'-joined path."""
  return {_leaf_name(path): zlib.crc32(_host(leaf).view(np.uint8))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def verify(path: str, tree: Any, expected: dict[str, int]) -> None:
  """Raises DamagedCheckpointError if an array of `tree` differs from its checksum.

  Arrays without a checksum (checkpoints saved before they were recorded) are taken
  as they read.
  """
  for name, crc in checksums(tree).items():
    if name in expected and expected[name] != crc:
      raise DamagedCheckpointError(path, f'{name} differs from its checksum')
