"""Kept-count schedules: how many weights per group survive at a given step."""

import jax
import jax.numpy as jnp


def cubic_density(step: jax.Array, begin: int, end: int,
                  final_density: float) -> jax.Array:
  """Zhu & Gupta (2017): d(t) = d_f + (1 - d_f)(1 - p)^3, p the progress in [0, 1].

  With `end <= begin` the density drops to `final_density` at `begin`.
  """
  if end > begin:
    progress = jnp.clip((step - begin) / (end - begin), 0.0, 1.0)
  else:
    progress = (jnp.asarray(step) >= begin).astype(jnp.float32)
  return final_density + (1.0 - final_density) * (1.0 - progress)**3


def kept_count(step: jax.Array, group_size: int, keep: int, begin: int,
               end: int) -> jax.Array:
  """max(k, ceil(g d(t))): g before `begin`, falling to `keep` at `end`."""
  density = cubic_density(jnp.asarray(step, jnp.float32), begin, end,
                          keep / group_size)
  # The epsilon keeps float error from rounding an exact integer up.
  count = jnp.ceil(group_size * density - 1e-4).astype(jnp.int32)
  return jnp.clip(count, keep, group_size)
