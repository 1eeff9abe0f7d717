"""Scan orders: every order is a permutation whose inverse undoes it, and each has its defining shape."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.ops import scan_orders as so


grid = st.integers(1, 9)
SETTINGS = dict(max_examples=20, deadline=None)


def _all_orders(t, h, w, p):
    return (so.vim_orders(h * w + p) + so.vmamba_orders(h, w) + so.plainmamba_orders(h, w)
            + so.videomamba_orders(t, h, w, p) + [so.temporal_first(t, h, w, p)])


@settings(**SETTINGS)
@given(t=st.integers(1, 3), h=grid, w=grid, p=st.integers(0, 2), d=st.integers(1, 3))
def test_every_order_is_invertible(t, h, w, p, d):
    for order in _all_orders(t, h, w, p):
        l = order.length
        assert torch.equal(torch.sort(order.perm).values, torch.arange(l)), order.name
        assert torch.equal(order.perm[order.inv], torch.arange(l))
        x = torch.randn(2, l, d)
        assert torch.equal(order.invert(order.apply(x)), x), order.name
        assert torch.equal(order.apply(order.invert(x)), x), order.name
        # apply really reorders: scan position s holds token perm[s]
        s = l // 2
        assert torch.equal(order.apply(x)[:, s], x[:, order.perm[s]])


@settings(**SETTINGS)
@given(h=grid, w=grid)
def test_grid_orders_follow_their_definition(h, w):
    rows, cols, rows_rev, cols_rev = so.vmamba_orders(h, w)
    assert torch.equal(rows.perm, torch.arange(h * w))
    for r in range(h):
        for c in range(w):
            assert int(cols.perm[c * h + r]) == r * w + c
    assert torch.equal(rows_rev.perm, rows.perm.flip(0))
    assert torch.equal(cols_rev.perm, cols.perm.flip(0))


@settings(**SETTINGS)
@given(h=grid, w=grid)
def test_snake_orders_are_continuous(h, w):
    """Zig-zag scans never jump: consecutive tokens are 4-neighbours on the grid."""
    for order in so.plainmamba_orders(h, w):
        rc = [divmod(int(i), w) for i in order.perm]
        for (r0, c0), (r1, c1) in zip(rc, rc[1:]):
            assert abs(r0 - r1) + abs(c0 - c1) == 1, order.name
        assert int(order.steps[0]) == so.STEP_BEGIN
        assert so.STEP_JUMP not in order.steps.tolist()


def test_step_directions_hand_example():
    sr = so.snake_rows(2, 3)  # 0 1 2 / 5 4 3
    assert sr.perm.tolist() == [0, 1, 2, 5, 4, 3]
    B, R, L, D, U = so.STEP_BEGIN, so.STEP_RIGHT, so.STEP_LEFT, so.STEP_DOWN, so.STEP_UP
    assert sr.steps.tolist() == [B, R, R, D, L, L]
    sc = so.snake_cols(2, 3)  # column 0 down, column 1 up, column 2 down
    assert sc.perm.tolist() == [0, 3, 4, 1, 2, 5]
    assert sc.steps.tolist() == [B, D, R, U, R, D]
    raster = so.raster(2, 2)
    assert raster.steps.tolist() == [B, R, so.STEP_JUMP, R]


def test_video_orders():
    fwd, bwd = so.videomamba_orders(2, 2, 3, n_prefix=1)
    assert torch.equal(fwd.perm, torch.arange(13))  # [cls, frame 0 rows, frame 1 rows]
    assert torch.equal(bwd.perm, torch.arange(13).flip(0))
    tf = so.temporal_first(2, 1, 2, n_prefix=1)  # tokens: cls, (t0: a b), (t1: a b)
    assert tf.perm.tolist() == [0, 1, 3, 2, 4]


def test_vim_order_includes_class_token():
    f, b = so.vim_orders(5)
    assert f.perm.tolist() == [0, 1, 2, 3, 4] and b.perm.tolist() == [4, 3, 2, 1, 0]


@pytest.mark.parametrize("bad", [torch.tensor([0, 0, 1]), torch.tensor([1, 2, 3]),
                                 torch.tensor([[0, 1]]), torch.tensor([0.0, 1.0])])
def test_bad_permutation_raises(bad):
    with pytest.raises(ValueError, match="perm"):
        so.ScanOrder("bad", bad)


def test_bad_grid_raises():
    with pytest.raises(ValueError, match="grid"):
        so.raster(0, 3)
