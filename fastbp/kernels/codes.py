"""Integer codes shared by the kernels, the compiler and the executor.

They are plain module-level integers so that numba treats them as
compile-time constants.  Every code is defined by a registry entry
(:mod:`fastbp.registry`: activations, losses, gates); the names here are
derived from them.
"""
from ..registry import activations as _R
from ..registry import gates as _G
from ..registry import losses as _L

# activations (fused into the linear epilogue or standalone): from the registry
ACT_NONE = _R.IDENTITY
ACT_RELU = _R.get("relu").code
ACT_SIGMOID = _R.get("sigmoid").code
ACT_TANH = _R.get("tanh").code
#: name -> code of the entries registered at import ("none": the identity)
ACTIVATIONS = {"none": ACT_NONE, **{e.name: e.code for e in _R.entries()}}

# losses: from the loss registry
LOSS_SOFTMAX_XENT = _L.get("softmax_cross_entropy").code
LOSS_MSE = _L.get("mse").code
LOSS_BCE_LOGITS = _L.get("bce_with_logits").code
LOSS_SVM = _L.get("svm").code
LOSS_POISSON = _L.get("poisson").code

#: name -> code of every loss
LOSSES = {e.name: e.code for e in _L.entries()}
#: losses whose targets are integer class labels
CLASSIFICATION_LOSSES = _L.classification_names()

# elementwise binary gates: from the gate registry
GATE_ADD = _G.ADD
GATE_MUL = _G.MUL
GATE_MAX = _G.MAX
GATE_DIV = _G.DIV
GATE_POW = _G.POW

