"""The training cases shared by the MPI scripts and tests/test_distributed.py.

Each case trains 20+ steps; ``rank_batch`` is the per-rank batch of the
2-rank run and ``global_batch`` the batch of the 1-process reference.
"""
import numpy as np

import fastbp

CASES = {
    # fit: 640 rows, 2 epochs of 10 steps, SGD with momentum, float32
    "fit_xent_sgdmom_f32": dict(mode="fit", widths=(20, 16, 4), act="relu", loss="softmax_cross_entropy",
                                opt=("sgd", dict(lr=0.1, momentum=0.9)), dtype=np.float32, n=640,
                                epochs=2, rank_batch=32, global_batch=64, seed=0, shuffle_seed=3),
    # fit: 650 rows -> 10 full global batches and a partial one of 10 rows (5 per rank), svm, float64
    "fit_svm_adam_f64": dict(mode="fit", widths=(12, 10, 10, 5), act="tanh", loss="svm",
                             opt=("adam", dict(lr=1e-2)), dtype=np.float64, n=650, epochs=2,
                             rank_batch=32, global_batch=64, seed=5, shuffle_seed=11),
    # calls: mse (mean over rows x outputs), Adam, float64, 32 + 32 rows per step
    "call_mse_adam_f64": dict(mode="call", widths=(12, 10, 3), act="sigmoid", loss="mse",
                              opt=("adam", dict(lr=1e-2)), dtype=np.float64, n=20 * 64, steps=20,
                              rows=(32, 32), rank_batch=32, global_batch=64, seed=1),
    # calls: bce_with_logits, Nesterov + weight decay, float32, uneven 40 + 24 rows per step
    "call_bce_uneven_f32": dict(mode="call", widths=(16, 12, 6), act="relu", loss="bce_with_logits",
                                opt=("sgd", dict(lr=0.2, momentum=0.5, nesterov=True, weight_decay=1e-3)),
                                dtype=np.float32, n=20 * 64, steps=20, rows=(40, 24), rank_batch=40,
                                global_batch=64, seed=2),
    # dropout: each rank draws the masks of its rows' places in the global minibatch
    # (fit: equal parts, shuffled, with a partial last batch; calls: uneven 40 + 24 rows)
    "fit_dropout_f64": dict(mode="fit", widths=(12, 16, 16, 4), act="relu", loss="softmax_cross_entropy",
                            opt=("sgd", dict(lr=0.1, momentum=0.9)), dtype=np.float64, n=650, epochs=2,
                            rank_batch=32, global_batch=64, seed=7, shuffle_seed=5, dropout=0.3),
    "call_dropout_uneven_f64": dict(mode="call", widths=(16, 12, 6), act="relu", loss="mse",
                                    opt=("adam", dict(lr=1e-2)), dtype=np.float64, n=20 * 64, steps=20,
                                    rows=(40, 24), rank_batch=40, global_batch=64, seed=4, dropout=0.5),
}


def make_data(case):
    rng = np.random.default_rng(case["seed"] + 77)
    n, d, c = case["n"], case["widths"][0], case["widths"][-1]
    X = rng.standard_normal((n, d)).astype(case["dtype"])
    if case["loss"] in ("softmax_cross_entropy", "svm"):
        Y = rng.integers(0, c, n).astype(np.int64)
    elif case["loss"] == "bce_with_logits":
        Y = (rng.random((n, c)) < 0.4).astype(case["dtype"])
    else:
        Y = rng.standard_normal((n, c)).astype(case["dtype"])
    return X, Y


def make_step(case, batch_size, seed):
    w, act = case["widths"], {"relu": fastbp.ReLU, "tanh": fastbp.Tanh, "sigmoid": fastbp.Sigmoid}[case["act"]]
    layers = []
    for i, (a, b) in enumerate(zip(w[:-1], w[1:])):
        layers.append(fastbp.Linear(a, b))
        if i < len(w) - 2:
            layers.append(act())
            if case.get("dropout"):
                layers.append(fastbp.Dropout(case["dropout"]))
    kind, kw = case["opt"]
    opt = fastbp.SGD(**kw) if kind == "sgd" else fastbp.Adam(**kw)
    return fastbp.compile(fastbp.Sequential(*layers), loss=case["loss"], optimizer=opt,
                          batch_size=batch_size, dtype=case["dtype"], seed=seed)
