"""fastbp's op registries: every op of a family defined once, as data.

* :mod:`.activations` -- elementwise activations: names (fastbp, PyTorch,
  scikit-learn, layer class), the scalar forward next to its derivative,
  whether the derivative reads the output or the pre-activation, parameters
  with defaults, the weight-init rule.  The CPU loops and the CUDA kernels
  are compiled from those scalar bodies (:mod:`fastbp.kernels.activations`,
  :mod:`fastbp.kernels.cuda.activations`); the layers, graph functions,
  ``fastbp.ops`` wrappers, ``from_torch``, the CLI and the estimator are
  generated from, or look up, the entries.
* :mod:`.losses`, :mod:`.gates`, :mod:`.optimizers` -- codes, names and the
  kernels that implement each entry, on both targets.
* :mod:`.norms` -- the normalisation layers (LayerNorm, BatchNorm1d): their
  graph op names and the scalar bodies of their elementwise parts, compiled
  for both targets (:mod:`fastbp.kernels.norm`, :mod:`fastbp.kernels.cuda.norm`).

* :mod:`.fastmath` -- ``exp``, ``erf``, ``log1p`` of one number that
  vectorise in float32 (the activations' scalar bodies call them).

These modules import neither numba nor numpy, but :mod:`.fastmath` (numba
dispatchers: the scalar bodies can only call compiled functions), which
:mod:`.activations` imports.
"""
