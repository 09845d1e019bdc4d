r"""ResNet-50 on ImageNet (tfds imagenet2012) with CCI 2 of 8, dynamic, 90 epochs.

  python main.py --config=configs/imagenet_resnet50_cci.py --workdir=runs/r50_cci \
      --config.data.data_dir=/path/to/tensorflow_datasets

Expect: not run here (accelerator schedule: batch 256 per 8 devices, lr 0.1 per 256, 5
warm-up epochs, cosine to 90 epochs, weight decay 1e-4; METHODS.md 4). SR-STE reports
77.0% top-1 for 2:4 on ResNet-50 (a different pattern; for placing results only). Training
takes Inception random-resized crops and flips; evaluation resizes to 256 and
center-crops 224 (configs/imagenet_resnet50_dense.py; docs/scale.md).
"""

from configs import cci_schedules, imagenet_resnet50_dense


def get_config(method: str = 'dynamic'):
  config = imagenet_resnet50_dense.get_config()
  cci_schedules.apply(config, method, dense_workdir='runs/r50_dense')
  return config
