"""Fixtures shared by the training tests."""

import pytest

from tests.train.test_loop import tiny_config
from train import dispatch


@pytest.fixture(scope='session')
def tiny_dense_workdir(tmp_path_factory):
  """A dense ResNet-8 trained 80 steps on 8x8 digits (the start of pruning tests)."""
  workdir = str(tmp_path_factory.mktemp('dense'))
  dispatch.train_and_evaluate(tiny_config(num_train_steps=80), workdir)
  return workdir
