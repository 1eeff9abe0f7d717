"""data.augment.shift_flip against a per-image loop, and train.augment in the vision trainer."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transmamba.data.augment import shift_flip
from transmamba.recipes.vision import train_teacher_main


def shift_flip_ref(x, dy, dx, mirror, fill):
    """out_i[c, r, s] = x_i[c, r + dy_i, s' + dx_i] (fill outside), s' = w-1-s when mirrored."""
    n, c, h, w = x.shape
    out = torch.full_like(x, fill)
    for i in range(n):
        for r in range(h):
            for s in range(w):
                sp = w - 1 - s if mirror[i] else s
                rr, ss = r + int(dy[i]), sp + int(dx[i])
                if 0 <= rr < h and 0 <= ss < w:
                    out[i, :, r, s] = x[i, :, rr, ss]
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 2), h=st.integers(1, 7), w=st.integers(1, 7),
       shift=st.integers(0, 3), flip=st.booleans(), seed=st.integers(0, 2**16))
def test_shift_flip_matches_loop(n, c, h, w, shift, flip, seed):
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    out = shift_flip(x, shift, flip, fill=-0.5, gen=torch.Generator().manual_seed(seed))
    # replay the generator in the same order as shift_flip draws
    g = torch.Generator().manual_seed(seed)
    if shift == 0 and not flip:
        assert out is x
        return
    dy = torch.randint(-shift, shift + 1, (n,), generator=g)
    dx = torch.randint(-shift, shift + 1, (n,), generator=g)
    mirror = (torch.rand(n, generator=g) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    torch.testing.assert_close(out, shift_flip_ref(x, dy, dx, mirror, -0.5), rtol=0, atol=0)


def test_shift_flip_moves_content_and_keeps_mass_when_it_fits():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 3:6, 3:6] = 1.0  # a block with a margin of 3: any shift <= 3 keeps it whole
    out = shift_flip(x, 3, True, fill=0.0, gen=torch.Generator().manual_seed(0))
    assert torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert (out != x).any(dim=(1, 2, 3)).float().mean() > 0.5  # most images moved


def test_shift_flip_rejects_bad_input():
    with pytest.raises(ValueError, match="n c h w"):
        shift_flip(torch.zeros(3, 8, 8), 1)
    with pytest.raises(ValueError, match="max_shift"):
        shift_flip(torch.zeros(1, 1, 8, 8), -1)


TINY = ["--data.dataset", "digits", "--vit.patch_size", "2", "--vit.d_model", "16", "--vit.depth", "1",
        "--vit.num_heads", "2", "--vit.d_ff", "32", "--train.epochs", "1", "--train.batch_size", "64",
        "--train.max_steps", "4", "--train.progress", "false", "--train.warmup_steps", "1",
        "--train.threads", "1"]


def test_teacher_trains_with_augmentation(tmp_path):
    out = tmp_path / "t"
    assert train_teacher_main(TINY + ["--train.augment.shift", "1", "--train.augment.flip", "true",
                                      "--out_dir", str(out)]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["config"]["train"]["augment"] == {"shift": 1, "flip": True}
    assert res["steps"] == 4 and 0 <= res["test_top1"] <= 1


def test_augmentation_refuses_clips(tmp_path):
    with pytest.raises(ValueError, match="image datasets"):
        train_teacher_main(["--data.dataset", "moving_digits", "--data.video.train_clips", "64",
                            "--data.video.test_clips", "16", "--data.video.canvas", "10",
                            "--vit.patch_size", "5", *TINY[2:], "--train.augment.shift", "1",
                            "--out_dir", str(tmp_path / "v")])
