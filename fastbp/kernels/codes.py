"""Integer codes shared by the kernels, the compiler and the executor.

They are plain module-level integers so that numba treats them as
compile-time constants.  Activation codes are defined by their registry
entries (:mod:`fastbp.registry.activations`); the names here are derived.
"""
from ..registry import activations as _R

# activations (fused into the linear epilogue or standalone): from the registry
ACT_NONE = _R.IDENTITY
ACT_RELU = _R.get("relu").code
ACT_SIGMOID = _R.get("sigmoid").code
ACT_TANH = _R.get("tanh").code
#: name -> code of the entries registered at import ("none": the identity)
ACTIVATIONS = {"none": ACT_NONE, **{e.name: e.code for e in _R.entries()}}

# losses
LOSS_SOFTMAX_XENT = 0
LOSS_MSE = 1
LOSS_BCE_LOGITS = 2
LOSS_SVM = 3

LOSSES = {
    "softmax_cross_entropy": LOSS_SOFTMAX_XENT,
    "mse": LOSS_MSE,
    "bce_with_logits": LOSS_BCE_LOGITS,
    "svm": LOSS_SVM,
}
#: losses whose targets are integer class labels
CLASSIFICATION_LOSSES = frozenset({"softmax_cross_entropy", "svm"})

# elementwise binary gates
GATE_ADD = 0
GATE_MUL = 1
GATE_MAX = 2

