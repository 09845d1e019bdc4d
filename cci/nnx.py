"""CCI in a Flax NNX training loop: the masked model for the forward pass.

`cci.spec_for`, `cci.sparsify` and `cci.forward_params` take an NNX parameter state
(`nnx.split(model, nnx.Param, ...)`, paths as NNX names them: 'blocks/0/conv1/kernel')
as they take a linen params tree. With `nnx.Optimizer`, whose state wraps its arrays,
`masked` runs the forward pass on the masked weights in place:

    optimizer = nnx.Optimizer(model, cci.sparsify(optax.sgd(0.1, 0.9), spec), wrt=nnx.Param)
    def loss_fn(model):
      with cci.nnx.masked(model, optimizer.opt_state, spec):
        logits = model(x)
"""

import contextlib
from collections.abc import Iterator
from typing import Any

from flax import nnx

from cci.sparsify import SparsitySpec, forward_params


@contextlib.contextmanager
def masked(model: nnx.Module, opt_state: Any, spec: SparsitySpec) -> Iterator[nnx.Module]:
  """Within the context, `model`'s parameters are `cci.forward_params`' masked weights.

  Inside `nnx.grad` the gradient reaches the latent weights as `forward_params`
  defines it (straight-through with SR-STE for 'dynamic'); batch statistics the
  forward pass updates stay in the model. On exit the parameters are the latent
  weights again.

  Args:
    model: the NNX model.
    opt_state: the state of a `cci.sparsify` transformation, or of `nnx.Optimizer`
      wrapping one (`optimizer.opt_state`).
    spec: the `SparsitySpec` given to `cci.sparsify`.
  """
  latent = nnx.as_pure(nnx.state(model, nnx.Param))
  nnx.update(model, forward_params(latent, nnx.as_pure(opt_state), spec))
  try:
    yield model
  finally:
    nnx.update(model, latent)
