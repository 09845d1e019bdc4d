"""Inference efficiency of sparse kernels: MACs, storage and an accelerator model.

The accelerator (METHODS.md 1.3, a project decision): `P` processing elements; each
group of `g` inputs of a dot product goes to one PE, which spends one cycle per
weight it must multiply. A wave of `P` groups lasts as long as its busiest PE.
  dense         every group costs g cycles.
  CCI           every group costs exactly k cycles: utilisation 100%.
  unstructured  a group costs its number of nonzeros; a wave costs its maximum.
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from cci import masks

VALUE_BITS = 32


@dataclasses.dataclass(frozen=True)
class LayerEfficiency:
  """One conv or dense layer; cycles and MACs are per example."""
  path: str
  grouped: bool
  kernel_shape: tuple[int, ...]
  positions: int  # Output positions (H x W, or 1 for dense).
  weights: int
  kept: int
  macs_dense: int
  macs_kept: int
  cycles_dense: int
  cycles: int  # Of this layer's mask on the accelerator.
  pes: int

  @property
  def utilisation(self) -> float:
    return self.macs_kept / (self.cycles * self.pes) if self.cycles else 1.0


def _groups(mask: np.ndarray, group_size: int) -> np.ndarray:
  """Nonzeros of each group in dot-product order, padding c_in up to a multiple of g."""
  *lead, c_in, c_out = mask.shape
  pad = -c_in % group_size
  m = np.pad(mask.reshape(-1, c_in, c_out), ((0, 0), (0, pad), (0, 0)))
  counts = m.reshape(m.shape[0], -1, group_size, c_out).sum(2)  # (taps, G, c_out)
  return counts.transpose(2, 0, 1).reshape(-1)  # Row by row: one dot product each.


def wave_cycles(group_counts: np.ndarray, pes: int) -> int:
  """Cycles of a stream of groups: waves of `pes` groups, each as slow as its max."""
  pad = -len(group_counts) % pes
  waves = np.pad(group_counts, (0, pad)).reshape(-1, pes)
  return int(waves.max(1).sum())


def layer_efficiency(path: str, mask: np.ndarray, positions: int, group_size: int,
                     grouped: bool, pes: int) -> LayerEfficiency:
  """MACs and accelerator cycles of one layer whose kept weights are `mask`."""
  mask = np.asarray(mask, bool)
  # Every output position repeats the layer's dot products; waves run across them.
  counts = np.tile(_groups(mask, group_size).astype(np.int8), positions)
  dense_counts = np.tile(_groups(np.ones_like(mask), group_size).astype(np.int8), positions)
  return LayerEfficiency(
      path=path, grouped=grouped, kernel_shape=mask.shape, positions=positions,
      weights=mask.size, kept=int(mask.sum()),
      macs_dense=mask.size * positions, macs_kept=int(mask.sum()) * positions,
      cycles_dense=wave_cycles(dense_counts, pes), cycles=wave_cycles(counts, pes),
      pes=pes)


def unstructured_mask(kernel: np.ndarray, density: float) -> np.ndarray:
  """The layer's largest-magnitude weights at `density` (ties to the lower index)."""
  return np.asarray(masks.magnitude_mask(jnp.asarray(kernel), density))


def index_bits(layer: LayerEfficiency, group_size: int) -> int:
  """CCI index bits of a layer: ceil(log2 g) per kept weight of a grouped kernel."""
  return layer.kept * math.ceil(math.log2(group_size)) if layer.grouped else 0


def storage_bits(layer: LayerEfficiency, group_size: int, fmt: str) -> int:
  """Bits to store a layer's kernel: 'dense', 'cci' (value + index) or 'csr'."""
  if fmt == 'dense' or (fmt == 'cci' and not layer.grouped):
    return layer.weights * VALUE_BITS
  if fmt == 'cci':
    return layer.kept * VALUE_BITS + index_bits(layer, group_size)
  rows = layer.kernel_shape[-1]
  row_length = layer.weights // rows
  column_bits = max(1, math.ceil(math.log2(row_length)))
  return layer.kept * (VALUE_BITS + column_bits) + (rows + 1) * 32


def totals(layers: list[LayerEfficiency]) -> dict[str, float]:
  """Whole-model cycles, utilisation and projected speedup over dense."""
  cycles = sum(l.cycles for l in layers)
  cycles_dense = sum(l.cycles_dense for l in layers)
  macs_kept = sum(l.macs_kept for l in layers)
  pes = layers[0].pes
  return {
      'cycles': cycles,
      'cycles_dense': cycles_dense,
      'macs_kept': macs_kept,
      'macs_dense': sum(l.macs_dense for l in layers),
      'utilisation': macs_kept / (cycles * pes),
      'speedup': cycles_dense / cycles,
      'density': sum(l.kept for l in layers) / sum(l.weights for l in layers),
  }
