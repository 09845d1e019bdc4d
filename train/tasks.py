"""What the labels are and how predictions are scored: classification or segmentation.

A classification label is one class per image; a segmentation label (mask) is one
class per pixel, and pixels labelled `ignore_label` count in no loss and no metric.
The jitted steps call `Task.loss`, `Task.accuracy` and `Task.eval_sums`; evaluation
adds the sums over batches and `summarize` turns them into the reported metrics:
top-1 (pixel accuracy for segmentation), mean loss, and for segmentation the
intersection over union of every class and their mean (mIoU).

`data.class_weights` weights the training loss per class (as PyTorch's
`CrossEntropyLoss(weight=...)`: a weighted mean over the counted examples or pixels),
for example down-weighting a background that covers most pixels; the evaluation
metrics, the evaluation loss included, stay unweighted. `data.label_smoothing` mixes
the training target with the uniform distribution over the classes (optax's
`smooth_labels`); evaluation again scores the plain labels.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

COST_METRICS = ('top1', 'miou')


@dataclasses.dataclass(frozen=True)
class Task:
  """Labels of `num_classes` classes; `ignore_label` set means per-pixel masks."""
  num_classes: int = 0  # Only segmentation needs it (the confusion matrix).
  ignore_label: int | None = None
  class_weights: tuple[float, ...] = ()  # Training-loss weight per class; () = all 1.
  label_smoothing: float = 0.0  # Uniform mass in the training target.

  @property
  def segmentation(self) -> bool:
    return self.ignore_label is not None

  def _weights(self, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Labels safe to index with (ignored pixels -> 0) and their 0/1 weights."""
    if not self.segmentation:
      return labels, jnp.ones(labels.shape, jnp.float32)
    valid = labels != self.ignore_label
    return jnp.where(valid, labels, 0), valid.astype(jnp.float32)

  def loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy over the examples (over the counted pixels of the batch),
    each weighted by its label's `class_weights` entry if they are set, against
    targets smoothed by `label_smoothing` if it is set."""
    labels, weights = self._weights(labels)
    if self.class_weights:
      weights = weights * jnp.asarray(self.class_weights, jnp.float32)[labels]
    if self.label_smoothing:
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                    self.label_smoothing)
      losses = optax.softmax_cross_entropy(logits, targets)
    else:
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)

  def accuracy(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples (counted pixels) whose arg-max is the label."""
    labels, weights = self._weights(labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0)

  def eval_sums(self, logits: jax.Array, labels: jax.Array,
                mask: jax.Array) -> dict[str, jax.Array]:
    """Sums over a batch whose examples count where `mask` (B,) is 1 (padding is 0).

    'loss_sum', 'correct' and 'count' sum over examples (counted pixels); a
    segmentation task adds 'confusion' (num_classes, num_classes): counted pixels by
    (label, prediction).
    """
    labels, weights = self._weights(labels)
    weights = weights * mask.reshape(mask.shape + (1,) * (labels.ndim - 1))
    predictions = jnp.argmax(logits, -1)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {'loss_sum': jnp.sum(losses * weights),
            'correct': jnp.sum((predictions == labels) * weights),
            'count': jnp.sum(weights)}
    if self.segmentation:
      sums['confusion'] = confusion_matrix(predictions, labels, weights, self.num_classes)
    return sums


CLASSIFICATION = Task()


def task_for(dataset: Any, class_weights: Sequence[float] = (),
             label_smoothing: float = 0.0) -> Task:
  """The task of a `train.data.ImageDataset`: classification, or segmentation if its
  labels are masks; `class_weights` (config `data.class_weights`) checked against its
  classes and `label_smoothing` (`data.label_smoothing`) against [0, 1) (ValueError
  naming the key)."""
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'data.label_smoothing={label_smoothing}: must be in [0, 1) (the '
                     'probability mass spread over the classes)')
  weights = tuple(float(w) for w in class_weights)
  if weights and (len(weights) != dataset.num_classes or min(weights) < 0
                  or max(weights) <= 0):
    raise ValueError(f'data.class_weights={weights}: needs one weight >= 0 per class '
                     f'({dataset.num_classes}: {", ".join(dataset.class_names)}), '
                     'not all 0')
  if dataset.ignore_label is None:
    if not weights and not label_smoothing:
      return CLASSIFICATION
    return Task(class_weights=weights, label_smoothing=float(label_smoothing))
  return Task(dataset.num_classes, dataset.ignore_label, weights, float(label_smoothing))


def confusion_matrix(predictions: jax.Array, labels: jax.Array, weights: jax.Array,
                     num_classes: int) -> jax.Array:
  """(num_classes, num_classes) sums of `weights` by (label, prediction)."""
  cells = (labels * num_classes + predictions).reshape(-1)
  sums = jax.ops.segment_sum(weights.reshape(-1), cells, num_classes * num_classes)
  return sums.reshape(num_classes, num_classes)


def intersection_over_union(confusion: np.ndarray) -> np.ndarray:
  """Per class: true positives / (label pixels + predicted pixels - true positives);
  NaN for a class neither labelled nor predicted anywhere."""
  confusion = np.asarray(confusion, np.float64)
  hits = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - hits
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, hits / union, np.nan)


def summarize(totals: Mapping[str, np.ndarray],
              class_names: Sequence[str] = ()) -> dict[str, float]:
  """The reported metrics of summed `Task.eval_sums`.

  Returns 'top1' and 'loss'; with a confusion matrix also 'miou' (the mean IoU over
  the classes labelled or predicted somewhere) and 'iou/<class name>' of each of them
  (classes absent from both are left out, as they have no IoU).
  """
  count = float(totals['count'])
  if count == 0:
    raise ValueError('No example (or no pixel outside the ignore label) to evaluate.')
  result = {'top1': float(totals['correct']) / count,
            'loss': float(totals['loss_sum']) / count}
  if 'confusion' in totals:
    iou = intersection_over_union(totals['confusion'])
    names = list(class_names) or [str(c) for c in range(len(iou))]
    result['miou'] = float(np.nanmean(iou))
    result.update({f'iou/{name}': float(v) for name, v in zip(names, iou)
                   if not np.isnan(v)})
  return result

