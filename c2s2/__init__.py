"""C2S2 (cost-aware channel sparse selection): pruning layers, selection and surgery.

See ../shared/METHODS.md section 2 and docs/methods.md (C2S2 channel selection). Pure
functions and a small Flax module; the progressive driver lives in `train.c2s2_driver`.

`c2s2.NAME` finds NAME in the first of `_SUBMODULES` that defines it, loading modules
only then (PEP 562), and this file names no function: a run that only traces the
channel graph (every run builds its model through it) imports `c2s2.graph` and not the
selection code, so its recorded code (`train.provenance.code_files`) holds only what it
used, and a change to the selection, a new function included, leaves it current.
"""

import importlib
import inspect
from typing import Any

_SUBMODULES = ('graph', 'layer', 'surgery', 'compact', 'selection', 'criteria', 'optim',
               'heads', 'jaxpr_tags', 'nnx')


def __getattr__(name: str) -> Any:
  if name in _SUBMODULES:
    return importlib.import_module(f'c2s2.{name}')
  if not name.startswith('_'):
    for module_name in _SUBMODULES:
      module = importlib.import_module(f'c2s2.{module_name}')
      value = vars(module).get(name)
      # Defined there (a function or class), or a constant of it; not an import.
      if value is not None and not inspect.ismodule(value) and getattr(
          value, '__module__', module.__name__) == module.__name__:
        return value
  raise AttributeError(f'module c2s2 has no attribute {name!r}')
