"""Twin clips: two real items, each with its own motion, and the twin that swaps the motions (transmamba.data.twin_clips)."""

import numpy as np
import pytest

from transmamba.data.clip_captions import DIRECTION_NAMES
from transmamba.data.moving_fmnist import DIRECTIONS
from transmamba.data.twin_clips import make_twin_clips, render_twin_pair, shrink, twin_caption, twin_facets


def _images(n=40, side=14, seed=0):
    """Random uint8 images (no zeros, so none matches a black patch; distinct with near certainty)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(1, 256, (n, side, side), dtype=np.uint8)
    return imgs, np.arange(n) % 10


def _matches(frame, imgs):
    """bool "k y x": image k lies whole in frame with its top-left corner at (y, x)."""
    win = np.lib.stride_tricks.sliding_window_view(frame, imgs.shape[1:])  # "y x side side"
    return (win[None] == imgs[:, None, None]).all(axis=(-1, -2))


def _find(frame, img):
    """(y, x) of the top-left corner of img in frame (the only exact match)."""
    hits = np.argwhere(_matches(frame, img[None])[0])
    assert len(hits) == 1, hits
    return tuple(int(v) for v in hits[0])


def test_shrink_averages_blocks():
    a = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    assert shrink(a).tolist() == [[[2, 4], [10, 12]]]  # means 2.5 -> 2 (round half to even), 4.5 -> 4, ...
    with pytest.raises(ValueError, match="multiple"):
        shrink(np.zeros((1, 5, 5), np.uint8))


def test_caption_names_the_lower_class_first():
    assert twin_caption((1, 2, 7, 4)) == "a pair of trousers moving up and a sneaker moving to the left"
    with pytest.raises(ValueError, match="lower class first"):
        twin_caption((7, 4, 1, 2))


@pytest.mark.parametrize("seed", [0, 1])
def test_each_item_moves_in_its_half_and_its_twin_swaps_the_directions(seed):
    imgs, _ = _images()
    rng = np.random.default_rng(seed)
    frames, canvas, speed = 3, 42, 3
    pair = render_twin_pair(imgs[0], imgs[1], 2, 7, rng, frames=frames, canvas=canvas, speed=speed)
    assert pair.shape == (2, frames, canvas, canvas)
    for k, dirs in enumerate(((2, 7), (7, 2))):
        for img, d, (x_lo, x_hi) in ((imgs[0], dirs[0], (0, 21)), (imgs[1], dirs[1], (21, 42))):
            pos = [_find(pair[k, t], img) for t in range(frames)]
            dy, dx = DIRECTIONS[d]
            for t in range(1, frames):  # one straight line, `speed` px per frame, never reflected
                assert pos[t] == (pos[t - 1][0] + speed * dy, pos[t - 1][1] + speed * dx)
            assert all(x_lo <= x and x + 14 <= x_hi and 0 <= y <= canvas - 14 for y, x in pos)
        assert int(pair[k].astype(np.int64).sum()) == frames * int(imgs[0].sum() + imgs[1].sum())  # no overlap


def test_a_canvas_too_small_for_the_motion_is_refused():
    imgs, _ = _images()
    with pytest.raises(ValueError, match="does not fit"):
        render_twin_pair(imgs[0], imgs[1], 0, 1, np.random.default_rng(0), frames=4, canvas=36, speed=3)


def test_twin_clips_spec_captions_and_facets():
    imgs, labs = _images()
    clips, spec = make_twin_clips(imgs, labs, 30, seed=5)
    clips2, spec2 = make_twin_clips(imgs, labs, 30, seed=5)
    assert (clips == clips2).all() and (spec == spec2).all()  # deterministic
    assert clips.shape == (60, 3, 42, 42) and spec.shape == (60, 4)
    assert (spec[:, 0] < spec[:, 2]).all() and (spec[:, 1] != spec[:, 3]).all()
    a, b = spec[0::2], spec[1::2]
    assert (a[:, [0, 2]] == b[:, [0, 2]]).all() and (a[:, [1, 3]] == b[:, [3, 1]]).all()  # twins swap directions
    f = twin_facets(spec)
    assert (f["items"][0::2] == f["items"][1::2]).all() and (f["directions"][0::2] == f["directions"][1::2]).all()
    assert len(set(f["items"].tolist())) > 1
    for i in range(0, 60, 2):  # both twins show the same two images, the items the spec names
        found = np.flatnonzero(_matches(clips[i, 0], imgs).any(axis=(1, 2)))
        assert sorted(labs[found].tolist()) == [spec[i, 0], spec[i, 2]]
        assert (np.flatnonzero(_matches(clips[i + 1, 0], imgs).any(axis=(1, 2))) == found).all()
    cap = twin_caption(spec[0])
    assert DIRECTION_NAMES[spec[0, 1]] in cap and DIRECTION_NAMES[spec[0, 3]] in cap


def test_unique_galleries_never_repeat_a_caption():
    imgs, labs = _images()
    _, spec = make_twin_clips(imgs, labs, 200, seed=1, unique=True)
    caps = [twin_caption(s) for s in spec]
    assert len(set(caps)) == len(caps)
    with pytest.raises(ValueError, match="at least two classes"):
        make_twin_clips(imgs, np.zeros(len(imgs), int), 2)
