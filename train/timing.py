"""Side-by-side timing: candidates are interleaved so machine noise hits all alike."""

import statistics
import time
from typing import Any, Callable

import jax


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int,
                warmup: int = 2) -> dict[str, float]:
  """Median seconds per call of each candidate, measured round-robin.

  Each round starts at the next candidate, so no candidate always runs first (after
  the previous round's slowest, or the warm-up).
  """
  for fn in candidates.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in candidates}
  names = list(candidates)
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      fn = candidates[name]
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}
