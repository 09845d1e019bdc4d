"""Flax NNX models written the way NNX users write them (issue 17), tiny sizes.

Each takes an NHWC batch of 8x8x3 images and returns 10 logits (or per-pixel logits).
`NnxCifarResNet` mirrors `train.models.CifarResNet` (shortcut 'B') attribute for
attribute, so a linen checkpoint of that network loads into it by path.
"""

from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp


def build(make: Callable[[nnx.Rngs], nnx.Module], seed: int = 0) -> nnx.Module:
  """`make(nnx.Rngs(seed))`, initialised in one fast-compiled jit: built eagerly, every
  initialiser of a new shape compiles on its own (seconds per model on 2 cores)."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
  state = jax.jit(lambda key: nnx.state(make(nnx.Rngs(key))),
                  compiler_options={'xla_backend_optimization_level': 0})(
                      jax.random.key(seed))
  return nnx.merge(graphdef, state)


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def _pool(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, (2, 2), strides=(2, 2))


def plain_net(rngs: nnx.Rngs) -> nnx.Sequential:
  """VGG style as one `nnx.Sequential`: conv-bn-relu-pool twice, flatten into Linear."""
  return nnx.Sequential(
      nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs), nnx.BatchNorm(8, rngs=rngs),
      nnx.relu, _pool,
      nnx.Conv(8, 12, (3, 3), use_bias=False, rngs=rngs), nnx.BatchNorm(12, rngs=rngs),
      nnx.relu, _pool, _flatten,
      nnx.Linear(2 * 2 * 12, 16, rngs=rngs), nnx.relu, nnx.Linear(16, 10, rngs=rngs))


class BasicBlock(nnx.Module):
  """`train.models.common.BasicBlock` (identity or 1x1 projection shortcut), same names."""

  def __init__(self, c_in: int, c_out: int, stride: int, projection: bool,
               rngs: nnx.Rngs):
    conv = lambda i, o, k, s: nnx.Conv(i, o, (k, k), strides=s, padding=k // 2,
                                       use_bias=False, rngs=rngs)
    norm = lambda c: nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.conv1, self.bn1 = conv(c_in, c_out, 3, stride), norm(c_out)
    self.conv2, self.bn2 = conv(c_out, c_out, 3, 1), norm(c_out)
    self.shortcut_conv = conv(c_in, c_out, 1, stride) if projection else None
    self.shortcut_bn = norm(c_out) if projection else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.shortcut_conv is not None:
      x = self.shortcut_bn(self.shortcut_conv(x))
    return nnx.relu(y + x)


class ResidualNet(nnx.Module):
  """A stem, an identity block and a projected block held in an `nnx.List`."""

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(8, rngs=rngs)
    self.blocks = nnx.List([BasicBlock(8, 8, 1, False, rngs),
                            BasicBlock(8, 12, 2, True, rngs)])
    self.head = nnx.Linear(12, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean(axis=(1, 2)))


class Inception(nnx.Module):
  """Two branches concatenated into a conv."""

  def __init__(self, rngs: nnx.Rngs):
    self.branch_1x1 = nnx.Conv(3, 4, (1, 1), rngs=rngs)
    self.branch_3x3 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.mix = nnx.Conv(12, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.concatenate([nnx.relu(self.branch_1x1(x)), nnx.relu(self.branch_3x3(x))], -1)
    return self.head(nnx.relu(self.mix(y)).mean(axis=(1, 2)))


class InvertedResidual(nnx.Module):
  """MobileNet-v2 style: expand, depth-wise conv, project, add to the stem."""

  def __init__(self, rngs: nnx.Rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(8, rngs=rngs)
    self.expand = nnx.Conv(8, 16, (1, 1), use_bias=False, rngs=rngs)
    self.expand_bn = nnx.BatchNorm(16, rngs=rngs)
    self.depthwise = nnx.Conv(16, 16, (3, 3), feature_group_count=16, use_bias=False,
                              rngs=rngs)
    self.depthwise_bn = nnx.BatchNorm(16, rngs=rngs)
    self.project = nnx.Conv(16, 8, (1, 1), use_bias=False, rngs=rngs)
    self.project_bn = nnx.BatchNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu6(self.stem_bn(self.stem(x)))
    y = nnx.relu6(self.expand_bn(self.expand(x)))
    y = nnx.relu6(self.depthwise_bn(self.depthwise(y)))
    y = self.project_bn(self.project(y))
    return self.head((x + y).mean(axis=(1, 2)))


class LayerNormNet(nnx.Module):
  """A conv with an `nnx.LayerNorm` site (normalises across its channels), then
  per-pixel Linear layers, the second with a LayerNorm over its features."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
    self.conv_norm = nnx.LayerNorm(8, rngs=rngs)
    self.mlp = nnx.Linear(8, 16, rngs=rngs)
    self.out = nnx.Linear(16, 12, rngs=rngs)
    self.out_norm = nnx.LayerNorm(12, rngs=rngs)
    self.head = nnx.Linear(12, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.gelu(self.conv_norm(self.conv(x)))
    x = self.out_norm(self.out(nnx.relu(self.mlp(x))))
    return self.head(x.mean(axis=(1, 2)))


class NnxCifarResNet(nnx.Module):
  """`train.models.CifarResNet(depth, 10, shortcut='B')` in NNX, same paths."""

  def __init__(self, depth: int, rngs: nnx.Rngs, widths=(16, 32, 64)):
    n = (depth - 2) // 6
    self.stem_conv = nnx.Conv(3, widths[0], (3, 3), padding=1, use_bias=False, rngs=rngs)
    self.stem_bn = nnx.BatchNorm(widths[0], momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.block_names = []
    c_in = widths[0]
    for stage, width in enumerate(widths, start=1):
      for block in range(n):
        name = f'stage{stage}_block{block}'
        first = stage > 1 and block == 0
        setattr(self, name, BasicBlock(c_in, width, 2 if first else 1, first, rngs))
        self.block_names.append(name)
        c_in = width
    self.head = nnx.Linear(c_in, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem_conv(x)))
    for name in self.block_names:
      x = getattr(self, name)(x)
    return self.head(x.mean(axis=(1, 2)))


class EncoderDecoder(nnx.Module):
  """Segmentation style: strided conv, transposed conv, per-pixel LinearGeneral."""

  def __init__(self, rngs: nnx.Rngs):
    self.down = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
    self.down_bn = nnx.BatchNorm(8, rngs=rngs)
    self.up = nnx.ConvTranspose(8, 8, (2, 2), strides=(2, 2), rngs=rngs)
    self.mix = nnx.LinearGeneral(8, 12, axis=-1, rngs=rngs)
    self.classify = nnx.Conv(12, 3, (1, 1), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.down_bn(self.down(x)))
    x = nnx.relu(self.mix(nnx.relu(self.up(x))))
    return self.classify(x)  # per-pixel logits
