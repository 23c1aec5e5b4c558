"""The fitted estimators' ``coefs_`` and ``intercepts_``: lists of the step's live
arrays that write through, as assigning scikit-learn's lists changes its model."""
import numpy as np


class _LiveList(list):
    """A fitted estimator's ``coefs_`` / ``intercepts_``: the step's live arrays; assigning
    an item (or a whole slice) copies the values into the live array, which keeps its
    shape and dtype (ValueError for another shape)."""

    def __init__(self, name, arrays):
        super().__init__(arrays)
        self._name = name

    def _write(self, i, value):
        live = list.__getitem__(self, i)
        v = np.asarray(value)
        if v.shape != live.shape:
            raise ValueError(f"{self._name}[{i}] has shape {live.shape}; got an array of shape {v.shape}")
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{self._name}[{i}] must hold real numbers, got dtype {v.dtype}")
        live[...] = v

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            idx = range(len(self))[i]
            values = list(value)
            if len(values) != len(idx):
                raise ValueError(f"{self._name} has {len(idx)} arrays here; got {len(values)}")
            for j, v in zip(idx, values):
                self._write(j, v)
            return
        self._write(range(len(self))[i], value)

    def append(self, value):
        raise TypeError(f"{self._name} has one array per layer; the architecture cannot change")

    extend = insert = append
