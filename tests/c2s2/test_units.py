"""Units of a channel group (channels, conv-group positions, heads): couplings' indices,
`ChannelGroup.expand`, `unit_sums` and `ChannelGraph.at_sites`."""

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from c2s2.graph import ChannelGraph, ChannelGroup, Coupling


def group(size, unit=1, site_widths=()):
  return ChannelGroup(name='g', size=size, producers=('g',), sites=('a', 'b')[
      :len(site_widths)], couplings=(), joined=False, prunable=True, reason='',
                      unit=unit, site_widths=site_widths)


def test_indices_of_units_by_hand():
  heads = Coupling('params', ('k',), 0, offset=1, unit=2, stride=6, copies=2)
  assert heads.indices([0, 2], 13).tolist() == [1, 2, 5, 6, 7, 8, 11, 12]
  positions = Coupling('params', ('k',), 0, stride=4, copies=3)  # 3 conv groups of 4
  assert positions.indices([1], 12).tolist() == [1, 5, 9]
  flat = Coupling('params', ('k',), 0, unit=2, period=4)  # a flatten repeats units
  assert flat.indices([1], 8).tolist() == [2, 3, 6, 7]
  with pytest.raises(ValueError, match=r'k axis 0: channel index 12 beyond its size 12'):
    Coupling('params', ('k',), 0, stride=4, copies=4).indices([0], 12)


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(units=st.integers(1, 5), unit=st.integers(1, 4),
                  copies=st.integers(1, 4), offset=st.integers(0, 3))
def test_the_units_partition_their_entries(units, unit, copies, offset):
  c = Coupling('params', ('k',), 0, offset=offset, unit=unit, copies=copies,
               stride=units * unit if copies > 1 else 0)
  size = offset + units * unit * copies
  taken = np.concatenate([c.indices([u], size) for u in range(units)])
  assert sorted(taken.tolist()) == list(range(offset, size))
  assert c.indices(range(units), size).tolist() == list(range(offset, size))


@hypothesis.settings(deadline=None, max_examples=50)
@hypothesis.given(units=st.integers(1, 5), unit=st.integers(1, 4),
                  copies=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_expand_spreads_and_unit_sums_gathers(units, unit, copies, seed):
  g = group(units, unit)
  values = np.random.default_rng(seed).normal(size=units)
  width = units * unit * copies
  spread = np.asarray(g.expand(values, width))
  c = Coupling('params', ('k',), 0, unit=unit, copies=copies,
               stride=units * unit if copies > 1 else 0)
  for u in range(units):  # every channel of unit u holds its value
    np.testing.assert_allclose(spread[c.indices([u], width)], values[u], rtol=1e-6)
  np.testing.assert_allclose(g.unit_sums(spread), values * unit * copies, rtol=1e-5)


def test_expand_names_a_width_without_whole_units():
  with pytest.raises(ValueError, match='g: 10 channels do not hold 3 units of 2'):
    group(3, 2).expand(np.ones(3), 10)


def test_at_sites_spreads_each_group_over_each_site():
  graph = ChannelGraph((group(2, 3, site_widths=(12, 6)),))
  sites = graph.at_sites({'g': np.array([1.0, 2.0])})
  np.testing.assert_array_equal(sites['a'], [1, 1, 1, 2, 2, 2] * 2)
  np.testing.assert_array_equal(sites['b'], [1, 1, 1, 2, 2, 2])
