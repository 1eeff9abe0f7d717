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
