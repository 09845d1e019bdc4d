"""Test-session setup: one persistent XLA compilation cache for the whole suite.

Many tests compile the same small models' steps (and subprocess tests run main.py):
the cache lets every later compilation of an identical program load it instead.
With `CI` set (.ci/run), hypothesis draws the same examples every run, so CI checks
exactly what a local `CI=1 python -m pytest -q` checked.
"""

import os
import tempfile

import hypothesis
import jax

hypothesis.settings.register_profile('ci', derandomize=True)
if os.environ.get('CI'):
  hypothesis.settings.load_profile('ci')


def pytest_configure(config):
  del config
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR') or tempfile.mkdtemp(
      prefix='jax_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache  # Inherited by subprocesses.
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  jax.config.update('jax_compilation_cache_dir', cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
