"""Models by name, their per-conv widths, and widths files.

Names: 'vgg16'; 'unet' and 'deeplab' (segmentation: per-pixel logits, see
``segmentation.py``); 'resnet18', 'resnet34', 'resnet50', 'resnet101' and
'resnet152' are ImageNet ResNets; every other 'resnet{6n+2}' (resnet8, 14, 20,
32, 44, 56, 110, ...) is a CIFAR ResNet. 50 and 152 are also of the form 6n+2
but name the ImageNet models (resnet50 is ImageNet, resnet56 CIFAR); build
those CIFAR depths with ``CifarResNet(depth=...)`` directly.

Widths map conv paths ('stage1_block0/conv1', the kernel's parameter path
minus '/kernel') to output channels; a model takes a partial mapping that
overrides its defaults.
"""

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax.numpy as jnp
from jax.typing import DTypeLike

from train import workdir as workdir_lib
from train.models.common import check_width
from train.models.resnet_cifar import SHORTCUTS, CifarResNet, is_cifar_depth
from train.models.resnet_imagenet import STAGES, ImageNetResNet
from train.models.segmentation import DeepLab, UNet
from train.models.vgg import CifarVGG

SEGMENTATION_MODELS = {'unet': UNet, 'deeplab': DeepLab}
KNOWN_NAMES = ('vgg16', *(f'resnet{d}' for d in sorted(STAGES)),
               'resnet{6n+2} for CIFAR (resnet8, resnet14, resnet20, resnet32, '
               'resnet44, resnet56, resnet110, ...)', *SEGMENTATION_MODELS)


def build_model(name: str, num_classes: int,
                widths: Mapping[str, int] | None = None,
                dtype: DTypeLike = jnp.float32,
                shortcut: str = 'A', conv_impl: str = 'auto') -> nn.Module:
  """The model called ``name``, its widths validated.

  Args:
    name: See the module docstring.
    num_classes: Outputs of the head.
    widths: Conv path -> output channels overriding some defaults, or None.
    dtype: Computation dtype; parameters stay float32, logits are float32.
    shortcut: CIFAR ResNets: 'A' (zero-pad) or 'B' (1x1 conv + BN). The
      other models ignore it (ImageNet ResNets always project).
    conv_impl: VGG's conv implementation ('auto', 'xla', 'patches'; see
      ``common.PatchesConv``); the ResNets ignore it.

  Raises:
    ValueError: For an unknown name, num_classes < 1, a bad shortcut, or
      widths that name no conv or break a residual stream.
  """
  if num_classes < 1:
    raise ValueError(f'{name}: num_classes must be >= 1, got {num_classes}')
  if shortcut not in SHORTCUTS:
    raise ValueError(f'{name}: shortcut must be one of {SHORTCUTS}, got '
                     f'{shortcut!r}')
  # A FrozenDict keeps the module hashable (e.g. for static jit arguments).
  frozen = None if widths is None else flax.core.FrozenDict(widths)
  match = re.fullmatch(r'resnet(\d+)', name)
  depth = int(match.group(1)) if match else None
  if name == 'vgg16':
    model = CifarVGG(num_classes, widths=frozen, dtype=dtype, conv_impl=conv_impl)
  elif name in SEGMENTATION_MODELS:
    model = SEGMENTATION_MODELS[name](num_classes, widths=frozen, dtype=dtype)
  elif depth in STAGES:
    model = ImageNetResNet(depth, num_classes, widths=frozen, dtype=dtype)
  elif depth is not None and is_cifar_depth(depth):
    model = CifarResNet(depth, num_classes, widths=frozen, shortcut=shortcut,
                        dtype=dtype)
  else:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(KNOWN_NAMES)}')
  model.resolved_widths()
  return model


def default_widths(name: str, num_classes: int = 10,
                   shortcut: str = 'A') -> dict[str, int]:
  """Conv path -> output channels of every conv of the standard ``name``.

  The widths do not depend on ``num_classes``; it is checked as in
  ``build_model``. ``shortcut='B'`` adds the CIFAR ResNets' shortcut convs.
  """
  return build_model(name, num_classes, shortcut=shortcut).default_widths()


def stream_groups(name: str, shortcut: str = 'A') -> list[list[str]]:
  """Lists of conv paths whose outputs are summed in one residual stream and
  so must share a width (none for VGG)."""
  return build_model(name, 1, shortcut=shortcut).stream_groups()


def kernel_widths(params: Mapping[str, Any],
                  paths: Iterable[str]) -> dict[str, int] | None:
  """Each conv path's output channels, read from its kernel's last axis (arrays or
  checkpoint metadata alike); None if a path holds no kernel (another model's)."""
  widths = {}
  for path in paths:
    leaf = params
    for key in path.split('/'):
      leaf = leaf.get(key, {})
    if 'kernel' not in leaf:
      return None
    widths[path] = int(leaf['kernel'].shape[-1])
  return widths


def load_widths(spec: str) -> dict[str, int]:
  """Widths from '' (none), inline JSON text or a JSON file path.

  Raises:
    ValueError: If ``spec`` is neither, or not an object of integers.
  """
  if not spec.strip():
    return {}
  if spec.lstrip().startswith('{'):
    text = spec
  elif os.path.isfile(spec):
    with open(spec) as f:
      text = f.read()
  else:
    raise ValueError(f'widths spec {spec!r} is neither inline JSON nor a file')
  try:
    widths = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'widths spec {spec!r} is not valid JSON: {e}') from e
  if not isinstance(widths, dict):
    raise ValueError(f'widths spec {spec!r} is not a JSON object')
  return {key: check_width(f'widths spec {spec!r}', key, value)
          for key, value in widths.items()}


def save_widths(path: str, widths: Mapping[str, int]) -> None:
  """Writes ``widths`` as JSON with sorted keys, atomically."""
  workdir_lib.write_json(path, {k: int(v) for k, v in widths.items()})


__all__ = [
    'CifarResNet', 'CifarVGG', 'DeepLab', 'ImageNetResNet', 'SEGMENTATION_MODELS',
    'UNet', 'build_model',
    'default_widths', 'load_widths', 'save_widths', 'stream_groups',
]
