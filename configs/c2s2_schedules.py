"""METHODS.md section 4 defaults for C2S2, shared by the C2S2 configs."""

import ml_collections


def apply(config: ml_collections.ConfigDict, dense_workdir: str) -> None:
  """Sets `config.channel_pruning` to C2S2 from the dense run in `dense_workdir`.

  The dense run must hold out the same training images (`data.held_out`: 5,000 unless the base config already holds some out)
  so that the cost check's reference is not measured on images it memorised. The
  selection defaults ( phase 1 one epoch at lr 0.1 on the
  scales and 0.01 on the weights, phase 2 half an epoch, epsilon 0.005, 3 retries,
  min 2 channels) come from base.py; the final fine-tune of the compact model is a
  quarter of the dense schedule at lr 0.01, cosine.
  """
  config.channel_pruning.method = 'c2s2'
  config.data.held_out = config.data.held_out or 5000  # Keep the base run's split.
  config.init_from = dense_workdir
  config.num_epochs = config.num_epochs / 4
  config.optimizer.learning_rate = 0.01
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 0.0
