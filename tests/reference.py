"""Plain numpy float64 references: an unfused, layer-by-layer MLP step.

Written independently of fastbp's kernels, straight from the formulas of
the notes (``dW = X^T dY``, ``dX = dY W^T``, elementwise local gradients)
and the torch.optim update rules.
"""
import numpy as np

import fastbp


#: every activation of fastbp's registry, written again from its textbook
#: definition: name -> (f(z, *params), df/dz(z, *params)), both of the input z.
#: A registry entry without a reference here fails the registry-parametrised tests.
ACTIVATIONS = {
    "identity": (lambda z: z, lambda z: np.ones_like(z)),
    "relu": (lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(np.float64)),
    "sigmoid": (lambda z: 0.5 * (1 + np.tanh(0.5 * z)),
                lambda z: 0.25 * (1 - np.tanh(0.5 * z) ** 2)),
    "tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
    "leaky_relu": (lambda z, s: np.where(z > 0, z, s * z), lambda z, s: np.where(z > 0, 1.0, s)),
    "elu": (lambda z, a: np.where(z > 0, z, a * np.expm1(np.minimum(z, 0))),
            lambda z, a: np.where(z > 0, 1.0, a * np.exp(np.minimum(z, 0)))),
    # the normal CDF Phi and density phi (scipy's erf)
    "gelu": (lambda z: z * _Phi(z), lambda z: _Phi(z) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)),
    "gelu_tanh": (lambda z: 0.5 * z * (1 + np.tanh(_gelu_u(z))),
                  lambda z: 0.5 * (1 + np.tanh(_gelu_u(z)))
                  + 0.5 * z * (1 - np.tanh(_gelu_u(z)) ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * z * z)),
    "silu": (lambda z: z * _logistic(z), lambda z: _logistic(z) * (1 + z * (1 - _logistic(z)))),
    "softplus": (lambda z, b, t: np.where(b * z > t, z, np.logaddexp(0.0, b * z) / b),
                 lambda z, b, t: np.where(b * z > t, 1.0, _logistic(b * z))),
}


def _Phi(z):
    from scipy.special import erf
    return 0.5 * (1 + erf(z / np.sqrt(2)))


def _gelu_u(z):
    return np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)


def _logistic(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def _defaults(kind, params):
    """``params``, or (None) the registry's default values of the activation's parameters."""
    if params is not None:
        return tuple(params)
    from fastbp.registry import activations as reg
    return reg.get(kind).defaults


def act_fwd(kind, z, params=None):
    """The activation ``kind`` (a registry name; None: identity) of ``z``, float64
    (``params``: its parameter values; None: the defaults)."""
    z = np.asarray(z, np.float64)
    if kind is None or kind == "none":
        return z
    return ACTIVATIONS[kind][0](z, *_defaults(kind, params))


def act_grad(kind, z, params=None):
    """``d act / dz`` at ``z`` (float64)."""
    z = np.asarray(z, np.float64)
    if kind is None or kind == "none":
        return np.ones_like(z)
    return ACTIVATIONS[kind][1](z, *_defaults(kind, params))


def act_bwd(kind, y, dy):
    """``dy * act'`` from the output ``y``, for the activations whose derivative
    is a function of their output (relu, sigmoid, tanh, identity)."""
    if kind == "relu":
        return dy * (y > 0)
    if kind == "sigmoid":
        return dy * y * (1 - y)
    if kind == "tanh":
        return dy * (1 - y * y)
    return dy


def loss_and_grad(kind, S, y):
    """Mean loss and dL/dS (float64)."""
    S = np.asarray(S, np.float64)
    B, C = S.shape
    if kind == "softmax_cross_entropy":
        m = S.max(axis=1, keepdims=True)
        e = np.exp(S - m)
        p = e / e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(e.sum(axis=1)) + m[:, 0] - S[np.arange(B), y])
        d = p.copy()
        d[np.arange(B), y] -= 1
        return loss, d / B
    if kind == "svm":
        sy = S[np.arange(B), y][:, None]
        marg = S - sy + 1
        marg[np.arange(B), y] = 0
        pos = marg > 0
        loss = np.sum(np.where(pos, marg, 0)) / B
        d = pos.astype(np.float64)
        d[np.arange(B), y] = -pos.sum(axis=1)
        return loss, d / B
    T = np.asarray(y, np.float64).reshape(B, C)
    if kind == "mse":
        return np.mean((S - T) ** 2), 2 * (S - T) / (B * C)
    if kind == "bce_with_logits":
        loss = np.mean(np.maximum(S, 0) - S * T + np.log1p(np.exp(-np.abs(S))))
        return loss, (act_fwd("sigmoid", S) - T) / (B * C)
    raise ValueError(kind)


def layer_list(model, with_params=False):
    """[(name_prefix, activation or None, bias)] for each Linear of a Sequential
    (``with_params``: a fourth item, the activation's parameter values)."""
    out = []
    layers = model.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, fastbp.Linear):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            act = nxt.op if nxt is not None and not isinstance(nxt, fastbp.Linear) else None
            item = (str(i), act, layer.bias)
            if with_params:
                item += (tuple(nxt.params) if act is not None else (),)
            out.append(item)
    return out


def forward(model, params, x):
    """The unfused float64 forward pass.  Returns ``(spec, pre, acts)``: the layers
    (``layer_list(model, with_params=True)``), their pre-activations, and the activations
    (``acts[0]`` is ``x``, ``acts[-1]`` the scores)."""
    acts = [np.asarray(x, np.float64)]
    pre = []
    spec = layer_list(model, with_params=True)
    for name, act, has_b, ap in spec:
        z = acts[-1] @ params[name + ".W"]
        if has_b:
            z = z + params[name + ".b"]
        pre.append(z)
        acts.append(act_fwd(act, z, ap))
    return spec, pre, acts


def backward(spec, params, pre, acts, d, term=None):
    """The gradient of every parameter from ``d = dL/d(scores)`` (``forward``'s pass), each
    factor passed through ``term`` (``np.abs``: the magnitudes of the terms of each gradient)."""
    term = term or (lambda v: v)
    grads = {}
    for li in range(len(spec) - 1, -1, -1):
        name, act, has_b, ap = spec[li]
        d = d * term(act_grad(act, pre[li], ap))
        grads[name + ".W"] = term(acts[li]).T @ d
        if has_b:
            grads[name + ".b"] = d.sum(axis=0)
        d = d @ term(params[name + ".W"]).T
    return grads


def forward_backward(model, params, x, y, loss):
    """Unfused forward + backward.  Returns (loss, grads dict)."""
    spec, pre, acts = forward(model, params, x)
    L, d = loss_and_grad(loss, acts[-1], y)
    return L, backward(spec, params, pre, acts, d)


def optimizer_update(opt, params, grads, state):
    """torch.optim-style update of ``params`` (dict, float64) in place."""
    state.setdefault("t", 0)
    state["t"] += 1
    for k in params:
        p, g = params[k], grads[k].copy()
        if isinstance(opt, fastbp.SGD):
            if opt.weight_decay:
                g = g + opt.weight_decay * p
            if opt.momentum:
                v = state.get(k, np.zeros_like(p))
                v = opt.momentum * v + g
                state[k] = v
                g = g + opt.momentum * v if opt.nesterov else v
            params[k] = p - opt.lr * g
        else:
            b1, b2 = opt.betas
            if opt.weight_decay:
                if opt.decoupled:
                    p = p * (1 - opt.lr * opt.weight_decay)
                else:
                    g = g + opt.weight_decay * p
            m = b1 * state.get(k + ".m", np.zeros_like(p)) + (1 - b1) * g
            v = b2 * state.get(k + ".v", np.zeros_like(p)) + (1 - b2) * g * g
            state[k + ".m"], state[k + ".v"] = m, v
            t = state["t"]
            mhat = m / (1 - b1 ** t)
            vhat = v / (1 - b2 ** t)
            params[k] = p - opt.lr * mhat / (np.sqrt(vhat) + opt.eps)


def mlp(widths, act="relu", bias=True, **act_params):
    """A Sequential of Linear layers with the activation ``act`` (a registry
    name) between them."""
    from fastbp.layers import layer_class
    from fastbp.registry import activations as acts
    layer = layer_class(acts.get(act))
    layers = []
    for i in range(len(widths) - 1):
        layers.append(fastbp.Linear(widths[i], widths[i + 1], bias=bias))
        if i < len(widths) - 2:
            layers.append(layer(**act_params))
    return fastbp.Sequential(*layers)


def targets(loss, rng, n, n_out):
    if loss in ("softmax_cross_entropy", "svm"):
        return rng.integers(0, n_out, n)
    if loss == "bce_with_logits":
        return (rng.random((n, n_out)) > 0.5).astype(np.float64)
    return rng.standard_normal((n, n_out))


def sklearn_split_state(random_state, widths):
    """scikit-learn's MLP generator where it splits off early stopping's validation set:
    ``RandomState(random_state)`` after its initialisation drew ``W`` then ``b`` of each layer
    (``widths``: inputs, hidden sizes, outputs).  fastbp's estimators split with the same state."""
    rs = np.random.RandomState(random_state)
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        rs.uniform(size=(fan_in, fan_out))
        rs.uniform(size=fan_out)
    return rs
