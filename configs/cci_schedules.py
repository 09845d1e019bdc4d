"""METHODS.md section 4 defaults for the three CCI algorithms, shared by the CCI configs."""

import ml_collections


def apply(config: ml_collections.ConfigDict, method: str, dense_workdir: str) -> None:
  """Sets `config.sparsity` to 2 of 8 with `method`.

  `dynamic` trains from scratch on the dense schedule (anneal over the first 30%,
  mask frozen for the last 10%). `oneshot` and `gradual` fine-tune the dense run in
  `dense_workdir` for a quarter of its schedule at lr 0.01 (gradual prunes over the
  first half of the fine-tuning).
  """
  config.sparsity.method = method
  config.sparsity.group_size = 8
  config.sparsity.keep = 2
  if method == 'dynamic':
    return
  config.init_from = dense_workdir
  config.num_epochs = config.num_epochs / 4
  config.optimizer.learning_rate = 0.01
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 0.0
  config.sparsity.end_fraction = 0.5
