"""BitLinear's quantisation formulas against tensors computed by hand."""

from __future__ import annotations

import torch

from trifecta.edge.bitlinear import BitLinear, int8_activations, ternary_weights


def test_absmean_ternary_weights_by_hand() -> None:
    w = torch.tensor([[0.4, -0.2, 0.0], [1.0, -0.6, 0.2]])
    values, beta = ternary_weights(w)
    # beta = mean |w| = (0.4 + 0.2 + 0 + 1.0 + 0.6 + 0.2) / 6 = 0.4
    assert torch.isclose(beta, torch.tensor(0.4))
    # w / beta = [1, -0.5, 0, 2.5, -1.5, 0.5] -> round half even [1, -0, 0, 2, -2, 0] -> clamp
    assert values.tolist() == [[1.0, 0.0, 0.0], [1.0, -1.0, 0.0]]


def test_absmax_int8_activations_by_hand() -> None:
    x = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    q, multiplier = int8_activations(x)
    # row 0: gamma = 2, x * 127 / 2 = [127, -63.5, 31.75] -> [127, -64, 32]
    assert q[0].tolist() == [127.0, -64.0, 32.0]
    assert multiplier[0].item() == 63.5
    # row 1: gamma clamps to 1e-5 so an all-zero token stays zero (no division by zero)
    assert q[1].tolist() == [0.0, 0.0, 0.0]


def test_eval_output_is_integer_product_times_scales() -> None:
    layer = BitLinear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.4, -0.2, 0.0], [1.0, -0.6, 0.2]]))
    layer.eval()
    x = torch.tensor([[2.0, -1.0, 0.5]])
    # x_q = [127, -64, 32]; W_t = [[1, 0, 0], [1, -1, 0]] -> acc = [127, 191]
    acc, multiplier = layer.integer_matmul(x)
    assert acc.tolist() == [[127.0, 191.0]]
    expected = torch.tensor([[127.0, 191.0]]) * (torch.tensor(0.4) / multiplier)
    assert torch.equal(layer(x), expected)


def test_straight_through_estimator_passes_gradients() -> None:
    torch.manual_seed(0)
    layer = BitLinear(8, 4).train()
    x = torch.randn(5, 8, requires_grad=True)
    layer(x).sum().backward()
    # STE: d/dW of sum(x_q/m @ w_q^T) taken as if quantisation were the identity
    x_q, multiplier = int8_activations(x.detach())
    assert layer.weight.grad is not None and x.grad is not None
    assert torch.allclose(layer.weight.grad, (x_q / multiplier).sum(0).expand(4, 8))
    values, beta = ternary_weights(layer.weight.detach())
    assert torch.allclose(x.grad, (values * beta).sum(0).expand(5, 8))


def test_training_forward_equals_eval_forward() -> None:
    torch.manual_seed(1)
    layer = BitLinear(16, 8)
    x = torch.randn(3, 16)
    trained = layer.train()(x)
    assert torch.allclose(trained, layer.eval()(x), atol=1e-5)


def test_quantisation_is_bit_identical_to_the_runtime() -> None:
    """The runtime (numba) and the numpy reference quantise exactly as BitLinear does: same
    integers and same float32 multipliers, on many random tokens (a division done as
    reciprocal-then-multiply would differ by one ulp on some of them)."""
    import numpy as np

    from trifecta.edge.kernels.activations import quantize
    from trifecta.edge.kernels.reference import quantize_activations

    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(3)) * 3
    q, multiplier = int8_activations(x)
    ref_q, ref_multiplier = quantize_activations(x.numpy())
    run_q, run_multiplier = quantize(x.numpy())
    assert np.array_equal(q.numpy().astype(np.int8), ref_q) and np.array_equal(ref_q, run_q)
    assert np.array_equal(multiplier.numpy(), ref_multiplier)
    assert np.array_equal(ref_multiplier, run_multiplier)
