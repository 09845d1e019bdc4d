r"""ResNet-50 on ImageNet (tfds imagenet2012) with C2S2 channel selection.

  python main.py --config=configs/imagenet_resnet50_c2s2.py --workdir=runs/r50_c2s2 \
      --config.data.data_dir=/path/to/tensorflow_datasets

Expect: not run here (accelerators). Starts from runs/r50_dense
(configs/imagenet_resnet50_dense.py with
--config.data.held_out=5000). Our decision for ImageNet's size: two bottleneck
layers per step, phase 1 a quarter epoch and phase 2 an eighth (16 steps, 6 epochs of
selection), then a 22.5-epoch fine-tune at lr 0.01.
"""

from configs import c2s2_schedules, imagenet_resnet50_dense


def get_config():
  config = imagenet_resnet50_dense.get_config()
  c2s2_schedules.apply(config, dense_workdir='runs/r50_dense')
  config.channel_pruning.layers_per_step = 2
  config.channel_pruning.phase1_epochs = 0.25
  config.channel_pruning.phase2_epochs = 0.125
  return config
