"""transmamba.models.vit: the ViT teacher runs frame by frame on video; its calibration statistics."""

import torch

from transmamba.models.vit import ViT, ViTConfig


def test_video_is_frame_wise():
    torch.manual_seed(5)
    model = ViT(ViTConfig(img_size=8, patch_size=4, d_model=8, depth=2, num_heads=2, d_ff=8,
                          num_classes=3)).eval()
    clip = torch.randn(2, 3, 1, 8, 8)
    logits, hidden, _ = model(clip, return_hidden=True)
    per_frame = torch.stack([model(clip[:, t]) for t in range(3)], 1)
    torch.testing.assert_close(logits, per_frame.mean(1))
    assert hidden[0].shape == (2, 3, 5, 8)
    torch.testing.assert_close(hidden[1][:, 2], model(clip[:, 2], return_hidden=True)[1][1])


def test_calibration_stats():
    torch.manual_seed(6)
    model = ViT(ViTConfig(img_size=8, patch_size=4, d_model=8, depth=2, num_heads=2, d_ff=12))
    x = torch.randn(4, 1, 8, 8)
    s = model.calibration_stats(x)
    assert s["heads"].shape == (2, 2) and s["qk"].shape == (2, 2, 4) and s["neurons"].shape == (2, 12)
    h0 = model.embed(x)
    h1 = model.blocks[0](h0)
    h2 = model.blocks[1](h1)
    manual = torch.stack([h0.abs().mean((0, 1)), h1.abs().mean((0, 1)), h2.abs().mean((0, 1))]).mean(0)
    torch.testing.assert_close(s["resid"], manual)
    torch.testing.assert_close(s["norm_inputs"]["blocks.1.norm1"], h1.flatten(0, 1))


def _tiles(grid: int, window: int) -> list[torch.Tensor]:
    """Raster indices of the patch tokens in each window x window tile."""
    r = torch.arange(grid * grid).reshape(grid, grid)
    return [r[i:i + window, j:j + window].flatten() for i in range(0, grid, window) for j in range(0, grid, window)]


def test_window_matches_each_tile_run_alone_values_and_gradients():
    """window > 0: a patch token's hidden states are those of its tile's patch tokens run through the
    blocks on their own (unmasked, no class token); the class token attends to every token. float64."""
    torch.manual_seed(7)
    cfg = ViTConfig(img_size=12, patch_size=2, d_model=8, depth=3, num_heads=2, d_ff=12, num_classes=3)
    model = ViT(cfg).double().eval()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64, requires_grad=True)
    _, hidden, _ = model(x, return_hidden=True, window=3)
    x_ref = x.detach().clone().requires_grad_(True)
    h, want = model.embed(x_ref), []
    for blk in model.blocks:
        nxt = blk(h).clone()  # full attention: only the class row of this is the reference
        for tile in _tiles(cfg.grid, 3):
            nxt[:, 1 + tile] = blk(h[:, 1 + tile])
        h = nxt
        want.append(h)
    for got, ref in zip(hidden, want):
        torch.testing.assert_close(got, ref)
    g = torch.randn_like(hidden[-1])
    (hidden[-1] * g).sum().backward()
    (want[-1] * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_window_mask_refuses_a_window_that_does_not_tile_the_grid():
    import pytest

    from transmamba.models.vit import window_mask

    model = ViT(ViTConfig(img_size=8, patch_size=2, d_model=8, depth=1, num_heads=2, d_ff=8))
    with pytest.raises(ValueError, match="window=3 must be a positive divisor of the patch grid"):
        model(torch.randn(1, 1, 8, 8), window=3)
    m = window_mask(4, 2, 1)
    assert m[0].all() and not m[1:, 0].any() and m[1, 2] and not m[1, 3] and m[1, 5]
