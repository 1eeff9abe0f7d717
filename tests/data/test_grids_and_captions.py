"""Grids of real images, their captions, and captioned moving clips (transmamba.data)."""

import numpy as np
import pytest

from transmamba.data.clip_captions import (DIRECTION_NAMES, all_clip_captions, caption_facets, clip_caption,
                                           make_captioned_clips)
from transmamba.data.fmnist_grids import CELLS, compose_grids, grid_caption, make_caption_grids
from transmamba.data.moving_fmnist import DIRECTIONS


def _images(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10


def test_compose_puts_each_image_in_its_cell():
    imgs, _ = _images()
    idx = np.array([[3, 7, 11, 19]])
    g = compose_grids(imgs, idx)[0]
    assert g.shape == (56, 56)
    assert (g[:28, :28] == imgs[3]).all() and (g[:28, 28:] == imgs[7]).all()
    assert (g[28:, :28] == imgs[11]).all() and (g[28:, 28:] == imgs[19]).all()


def test_caption_names_items_and_cells():
    assert grid_caption([7, 0, 8, 9], named=[0, 3]) == "a sneaker top left and an ankle boot bottom right"
    assert grid_caption([4, 3, 8, 1]) == ("a coat top left, a dress top right, a bag bottom left and "
                                          "a pair of trousers bottom right")
    assert grid_caption([5, 5, 5, 5], named=[2]) == "a sandal bottom left"


@pytest.mark.parametrize("n_named", [1, 2, 4])
def test_grids_are_deterministic_and_match_their_labels(n_named):
    imgs, labs = _images()
    g, cl, caps = make_caption_grids(imgs, labs, 50, seed=3, n_named=n_named)
    g2, cl2, caps2 = make_caption_grids(imgs, labs, 50, seed=3, n_named=n_named)
    assert (g == g2).all() and (cl == cl2).all() and caps == caps2
    for i in range(50):
        for k in range(4):
            cell = g[i, 28 * (k // 2):28 * (k // 2) + 28, 28 * (k % 2):28 * (k % 2) + 28]
            j = [j for j in range(len(imgs)) if (imgs[j] == cell).all()]
            assert j and labs[j[0]] == cl[i, k]  # a real image of the cell's class
        assert caps[i].count(" a") + caps[i].startswith("a") >= n_named
        assert sum(c in caps[i] for c in CELLS) == n_named


def test_unique_captions():
    imgs, labs = _images()
    _, _, caps = make_caption_grids(imgs, labs, 300, seed=0, n_named=2, unique=True)
    assert len(set(caps)) == 300


def test_clip_captions_and_straight_motion():
    caps = all_clip_captions()
    assert len(set(caps)) == 80 and caps[7 * 8 + 1] == clip_caption(7, 1) == "a sneaker moving up and to the right"
    assert len(DIRECTION_NAMES) == len(DIRECTIONS)
    imgs, labs = _images()
    imgs[:, 0, 0] = 255  # a marker pixel to track the item's top-left corner
    clips, cid = make_captioned_clips(imgs, labs, 40, frames=4, canvas=35, speed=2, seed=1)
    assert clips.shape == (40, 4, 35, 35)
    for i in range(40):
        d = cid[i] % 8
        assert d == i % 8
        corners = []
        for t in range(4):
            ys, xs = np.nonzero(clips[i, t])
            corners.append((ys.min(), xs.min()))
        steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(corners, corners[1:])}
        assert steps == {(2 * DIRECTIONS[d][0], 2 * DIRECTIONS[d][1])}  # never reflected
    c2, cid2 = make_captioned_clips(imgs, labs, 40, frames=4, canvas=35, speed=2, seed=1)
    assert (clips == c2).all() and (cid == cid2).all()
    with pytest.raises(ValueError, match="bounce_free"):
        make_captioned_clips(imgs, labs, 4, frames=4, canvas=30, speed=2)


def test_caption_facets_name_the_item_and_the_direction():
    caps = all_clip_captions()
    f = caption_facets(np.arange(80))
    for cid in range(80):
        assert caps[cid] == clip_caption(int(f["item"][cid]), int(f["direction"][cid]))
