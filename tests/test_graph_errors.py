"""Graph errors are raised when the graph is built or compiled, naming the nodes involved."""
import numpy as np
import pytest

import fastbp
from fastbp import GraphError
from fastbp.graph import GraphTypeError


def test_incompatible_broadcast_names_both_nodes():
    g = fastbp.Graph()
    a = g.input("a", (3, 4))
    b = g.input("b", (5,))
    with pytest.raises(GraphError, match=r"add: shapes \(3, 4\) of <input node 'a'.*\(5,\) of <input node 'b'"):
        a + b


def test_incompatible_matmul_names_both_nodes():
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", np.zeros((4, 2)))
    with pytest.raises(GraphError, match=r"matmul: inner dimensions of <input node 'x'.*<param node 'W'"):
        x @ W


def test_output_not_depending_on_wrt():
    g = fastbp.Graph()
    x = g.input("x", ())
    y = g.input("y", ())
    f = x * 2
    with pytest.raises(GraphError, match=r"does not depend on wrt node <input node 'y'"):
        fastbp.grad(f, wrt=[x, y])


def test_wrt_must_be_input_or_param():
    g = fastbp.Graph()
    x = g.input("x", ())
    h = x * 3
    with pytest.raises(GraphError, match=r"wrt node <mul node .*is not an input or a parameter"):
        fastbp.grad(h * h, wrt=[h])


def test_node_from_another_graph_in_wrt_and_operators():
    g1, g2 = fastbp.Graph(), fastbp.Graph()
    x = g1.input("x", ())
    z = g2.input("z", ())
    with pytest.raises(GraphError, match="another graph"):
        x + z
    with pytest.raises(GraphError, match=r"wrt node <input node 'z'.*another graph"):
        fastbp.grad(x * x, wrt=[z])


def test_duplicate_names_and_bad_shapes():
    g = fastbp.Graph()
    g.input("x", (2,))
    with pytest.raises(GraphError, match="'x' is already used"):
        g.param("x", [1.0, 2.0])
    with pytest.raises(GraphError, match="at most 2 dimensions"):
        g.input("t", (2, 2, 2))
    with pytest.raises(GraphError, match="only the first"):
        g.input("u", (3, None))


def test_unknown_loss_and_optimizer_list_valid_ones():
    model = fastbp.Sequential(fastbp.Linear(3, 2))
    with pytest.raises(ValueError, match="valid losses: bce_with_logits, mse, poisson, softmax_cross_entropy, svm"):
        fastbp.compile(model, loss="hinge")
    with pytest.raises(ValueError, match="valid: fastbp.SGD.*fastbp.Adam.*fastbp.AdamW.*fastbp.RMSprop.*'sgd', 'adam', 'adamw', 'rmsprop'"):
        fastbp.compile(model, optimizer="adagrad")


def test_incompatible_layer_widths():
    with pytest.raises(ValueError, match=r"Linear\(4, 2\) receives 3 features"):
        fastbp.Sequential(fastbp.Linear(5, 3), fastbp.ReLU(), fastbp.Linear(4, 2))


@pytest.mark.parametrize("bad", [lambda x, W: x + np.ones((2, 3)), lambda x, W: np.ones((2, 3)) - x,
                                 lambda x, W: x - np.ones((2, 3)), lambda x, W: x @ np.ones((5, 5)),
                                 lambda x, W: np.ones((5, 5)) @ x, lambda x, W: fastbp.maximum(x, np.ones((2, 3))),
                                 lambda x, W: fastbp.maximum(np.ones((2, 3)), x),
                                 lambda x, W: fastbp.batch_norm(x, name="W")])
def test_a_rejected_operation_adds_no_node(bad):
    """The constant lifted for an operation whose shapes do not fit (and a batch_norm node
    whose name was taken) stayed in ``g.nodes``; node ids and default names then shifted."""
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", np.ones((3, 3)))
    before = list(g.nodes)
    with pytest.raises(GraphError):
        bad(x, W)
    assert g.nodes == before
    y = x @ W + 1.0
    assert [n.id for n in g.nodes] == list(range(len(g.nodes))) and y.name == f"add{y.id}"


def test_numpy_functions_on_a_node_are_refused_and_operators_still_work():
    """``np.sum(node)`` returned the node itself (its gradients then those of an unsummed output)."""
    g = fastbp.Graph()
    x = g.input("x", (None, 3))
    W = g.param("W", np.ones((3, 3)))
    with pytest.raises(TypeError, match=r"numpy.sum does not take graph nodes .*fastbp.sum"):
        np.sum(x @ W)
    with pytest.raises(TypeError):
        np.maximum(x, 0)
    for y in (np.ones(3) + x, np.ones(3) * x, np.ones(3) - x, np.ones((3, 3)) @ W, 2.0 * x):
        assert isinstance(y, fastbp.Node)
    out = fastbp.sum(np.ones((1, 3)) * (x @ W))
    assert out.op == "sum" and out.shape == ()


@pytest.mark.parametrize("value", [[True, 2], [[1.0, 2.0], (np.True_, 3.0)], [np.array([False]), np.array([1])]])
def test_a_bool_among_numbers_is_refused_not_read_as_a_number(value):
    """numpy reads ``[True, 2]`` as ``[1, 2]``; fastbp refuses bools (``x + True``) and refuses
    them inside a list of numbers too, in constants, parameters and a gradient function's inputs."""
    g = fastbp.Graph()
    shape = np.asarray(value).shape
    x = g.input("x", shape)
    with pytest.raises(GraphTypeError, match="bool"):
        x + value
    with pytest.raises(GraphTypeError, match="param 'p'.*bool"):
        g.param("p", value)
    f = fastbp.grad(fastbp.sum(x * 2.0), [x])
    with pytest.raises(TypeError, match="x must be a real array.*bool"):
        f(x=value)
    assert f(x=np.ones(shape))[0] == 2.0 * np.prod(shape)
