import torch
from torch import nn

from bench.measure import activation_bytes, flops_per_step, tensor_bytes


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_activation_bytes_of_a_known_chain():
    # Linear1 saves its input (excluded) and weight (a parameter: excluded);
    # ReLU saves its output [5, 16]; Linear2 saves that same tensor as input
    # (one storage, counted once): 5 * 16 * 4 bytes.
    model = _chain()
    x = torch.randn(5, 8)
    got = activation_bytes(lambda: model(x).sum(), [*model.parameters(), x])
    assert got == 5 * 16 * 4


def test_activation_bytes_counts_inputs_when_not_excluded():
    model = _chain()
    x = torch.randn(5, 8)
    got = activation_bytes(lambda: model(x).sum(), list(model.parameters()))
    assert got == 5 * 16 * 4 + 5 * 8 * 4


def test_frozen_trunk_under_no_grad_saves_only_what_the_head_reads():
    trunk = _chain().requires_grad_(False)
    head = nn.Linear(4, 3)
    x = torch.randn(5, 8)

    def step() -> torch.Tensor:
        with torch.no_grad():
            feats = trunk(x)
        return head(feats).sum()

    # the weight gradient of the head needs its input [5, 4]: 80 bytes, nothing of the trunk
    assert activation_bytes(step, [*head.parameters(), x]) == 5 * 4 * 4


def test_flops_per_step_of_a_linear():
    lin = nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8)
    # forward mm 2*5*8*4 = 320; backward: weight grad only (x needs no grad) = 320
    assert flops_per_step(lambda: lin(x).sum()) == 640


def test_tensor_bytes():
    assert tensor_bytes([torch.zeros(3, 4), torch.zeros(2, dtype=torch.bfloat16)]) == 48 + 4
