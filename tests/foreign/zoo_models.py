"""Patterns of third-party model zoos (issue 22), written as their users write them:
grouped convs (ResNeXt), modules built inside `__call__` from a stored class or with
parent=None, `nn.share_scope`, `nn.remat`, `nn.scan`, `nn.vmap`, and ViT blocks with a
fused QKV projection or separate Q, K and V projections."""

import functools

import flax.linen as nn
import jax


class ResNeXtBlock(nn.Module):
  """ResNeXt bottleneck: 1x1, 3x3 with 32 conv groups, 1x1; identity shortcut."""
  width: int = 128
  cardinality: int = 32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train)
    y = nn.relu(norm()(nn.Conv(self.width, (1, 1), use_bias=False)(x)))
    y = nn.Conv(self.width, (3, 3), feature_group_count=self.cardinality,
                use_bias=False)(y)
    y = nn.relu(norm()(y))
    y = norm()(nn.Conv(x.shape[-1], (1, 1), use_bias=False)(y))
    return nn.relu(x + y)


class ResNeXt(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.BatchNorm(not train)(nn.Conv(16, (3, 3), use_bias=False)(x)))
    x = ResNeXtBlock()(x, train)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


class Identity(nn.Module):
  """timm's default for an optional layer (attention, drop path)."""

  def __call__(self, x):
    return x


class Squeeze(nn.Module):
  """A squeeze-excitation attention, one choice of `FactoryBlock.attention`."""

  @nn.compact
  def __call__(self, x):
    gate = nn.sigmoid(nn.Dense(x.shape[-1])(nn.relu(nn.Dense(4)(x.mean(axis=(1, 2))))))
    return x * gate[:, None, None, :]


class FactoryBlock(nn.Module):
  """Builds its attention from a stored class inside `__call__`, and a drop path
  unbound (parent=None)."""
  attention: type = Identity

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.Conv(8, (3, 3), name='conv')(x))
    y = self.attention()(y)
    return Identity(parent=None)(y) + x


class SharedScope(nn.Module):
  """A wrapper sharing its scope with the block it wraps (`nn.share_scope`)."""

  def setup(self):
    self.inner = FactoryBlock(attention=Squeeze)
    nn.share_scope(self, self.inner)

  def __call__(self, x):
    return self.inner(x)


class FactoryNet(nn.Module):
  """A stem, a factory block, a shared-scope block and a rematerialised block."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name='stem')(x))
    x = FactoryBlock(name='plain')(x)
    x = SharedScope(name='shared')(x)
    x = nn.remat(FactoryBlock)(attention=Squeeze, name='remat')(x)
    return nn.Dense(10, name='head')(x.mean(axis=(1, 2)))


class ScanBlock(nn.Module):

  @nn.compact
  def __call__(self, x, _):
    return FactoryBlock()(x), None


class ScannedNet(nn.Module):
  """Two blocks under `nn.scan` (stacked parameters), after a stem."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name='stem')(x))
    x, _ = nn.scan(ScanBlock, variable_axes={'params': 0}, split_rngs={'params': True},
                   length=2)(name='blocks')(x, None)
    return nn.Dense(10, name='head')(x.mean(axis=(1, 2)))


class EnsembleNet(nn.Module):
  """A Dense ensemble under `nn.vmap` (stacked kernels), after a stem."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name='stem')(x)).mean(axis=(1, 2))
    ensemble = nn.vmap(nn.Dense, in_axes=None, out_axes=0, axis_size=2,
                       variable_axes={'params': 0}, split_rngs={'params': True})
    y = ensemble(6, name='ensemble')(x)
    return nn.Dense(10, name='head')(y.mean(axis=0))


class Attention(nn.Module):
  """timm-style multi-head self-attention; the head count follows the width."""
  head_dim: int = 4
  layout: str = 'fused'  # one Dense to Q, K, V; or 'separate' Dense layers
  fixed_heads: int = 0  # > 0: a hard-coded head count in the reshape

  @nn.compact
  def __call__(self, x):
    b, n, c = x.shape
    heads = self.fixed_heads or -1
    if self.layout == 'fused':
      qkv = nn.Dense(3 * c, name='qkv')(x).reshape(b, n, 3, heads, self.head_dim)
      q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    else:
      q, k, v = (nn.Dense(c, name=name)(x).reshape(b, n, heads, self.head_dim)
                 .transpose(0, 2, 1, 3) for name in ('q', 'k', 'v'))
    weights = jax.nn.softmax(q @ k.swapaxes(-2, -1) * self.head_dim**-0.5, axis=-1)
    y = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
    return nn.Dense(c, name='proj')(y)


class ViT(nn.Module):
  """Patches of 2x2 pixels, one pre-norm transformer block, a mean-pooled head; its
  attention timm-style (`layout` 'fused' or 'separate') or flax's ('flax')."""
  layout: str = 'fused'
  fixed_heads: int = 0

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    x = nn.Dense(12, name='embed')(x.reshape(b, (h // 2) * (w // 2), 4 * c))
    if self.layout == 'flax':
      attention = nn.MultiHeadDotProductAttention(num_heads=3, name='attn')
    else:
      attention = Attention(layout=self.layout, fixed_heads=self.fixed_heads, name='attn')
    x = x + attention(nn.LayerNorm(name='norm1')(x))
    y = nn.gelu(nn.Dense(16, name='fc1')(nn.LayerNorm(name='norm2')(x)))
    x = x + nn.Dense(x.shape[-1], name='fc2')(y)
    return nn.Dense(10, name='head')(nn.LayerNorm(name='norm')(x).mean(axis=1))
