"""Loss objects for the layer API: ``loss, dscores = SoftmaxCrossEntropy()(scores, y)``."""
from fastnn.functional import losses as _fl

__all__ = ["Loss", "SoftmaxCrossEntropy", "MulticlassHinge", "BinaryCrossEntropy", "BinaryHinge",
           "MeanSquaredError", "get_loss"]


class Loss:
    """A loss averaged over the batch; calling it returns ``(loss, dscores)``."""

    fn = None
    #: what ``Sequential.evaluate``/``fit`` report as accuracy: "multiclass", "binary01",
    #: "binary_pm1" or None (regression)
    accuracy_kind = None

    def __call__(self, scores, y):
        return type(self).fn(scores, y)

    def predict_labels(self, scores):
        """Class predictions from scores, as the loss defines them (None for regression):
        scores (N, C) for a multiclass loss, (N,) or (N, 1) for a binary one, else a
        ValueError naming scores."""
        import numpy as np

        kind = self.accuracy_kind
        if kind is None:
            return None
        scores = np.asarray(scores)
        if kind == "multiclass":
            if scores.ndim != 2 or scores.shape[1] == 0:
                raise ValueError(f"scores must have shape (N, C), got {scores.shape}")
            return np.argmax(scores, axis=1)
        if kind not in ("binary01", "binary_pm1"):
            return None   # (a kind of a loss class of the caller's own)
        if not (scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1)):
            raise ValueError(f"scores must have shape (N,) or (N, 1) for a binary loss, got {scores.shape}")
        positive = scores.reshape(-1) > 0
        if kind == "binary01":
            return positive.astype(np.int64)
        return np.where(positive, 1, -1)

    def __repr__(self):
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    """Softmax classifier: cross-entropy of softmax(scores), integer labels in [0, C)."""
    fn = staticmethod(_fl.softmax_loss)
    accuracy_kind = "multiclass"


class MulticlassHinge(Loss):
    """Multiclass SVM loss (margin 1), integer labels in [0, C)."""
    fn = staticmethod(_fl.svm_loss)
    accuracy_kind = "multiclass"


class BinaryCrossEntropy(Loss):
    """A single sigmoid neuron as binary softmax classifier: scores are logits (N,) or (N, 1),
    labels in {0, 1}."""
    fn = staticmethod(_fl.logistic_loss)
    accuracy_kind = "binary01"


class BinaryHinge(Loss):
    """A single neuron as binary SVM: hinge loss on scores (N,) or (N, 1), labels in {-1, +1}."""
    fn = staticmethod(_fl.binary_svm_loss)
    accuracy_kind = "binary_pm1"


class MeanSquaredError(Loss):
    """Regression with a linear output: ``0.5 * sum((scores - y)**2) / N``."""
    fn = staticmethod(_fl.mse_loss)
    accuracy_kind = None


_BY_NAME = {"softmax": SoftmaxCrossEntropy, "cross_entropy": SoftmaxCrossEntropy,
            "svm": MulticlassHinge, "hinge": MulticlassHinge, "logistic": BinaryCrossEntropy,
            "binary_cross_entropy": BinaryCrossEntropy, "binary_hinge": BinaryHinge,
            "mse": MeanSquaredError}


def get_loss(loss):
    """A Loss instance from an instance, a Loss class or a name ('softmax', 'svm', 'mse', ...)."""
    if isinstance(loss, type) and issubclass(loss, Loss):
        loss = loss()
    if isinstance(loss, Loss):
        cls = type(loss)
        if getattr(cls, "fn", None) is None and getattr(cls, "__call__", None) is Loss.__call__:
            raise TypeError(f"loss {type(loss).__name__} computes nothing: give a loss such as "
                            f"{sorted(_BY_NAME)}, or a Loss subclass with fn or __call__")
        return loss
    if isinstance(loss, str):
        if loss in _BY_NAME:
            return _BY_NAME[loss]()
        raise ValueError(f"loss must be a fastnn Loss or one of {sorted(_BY_NAME)}, got {loss!r}")
    raise TypeError(f"loss must be a fastnn Loss or one of {sorted(_BY_NAME)}, got "
                    f"{type(loss).__name__} {loss!r}")
