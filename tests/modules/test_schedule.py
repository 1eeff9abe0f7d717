import pytest

from transmamba.modules.schedule import ATTENTION_ONLY, SCHEDULES, make_schedule


def test_staggered_spreads_points_evenly_and_repeats():
    s = make_schedule({"name": "staggered", "period": 8, "span": 1024})
    assert s.transpoints(16, 1024) == [0, 128, 256, 384, 512, 640, 768, 896] * 2
    assert s.transpoints(8, 4096) == [0, 128, 256, 384, 512, 640, 768, 896]  # absolute tokens


def test_named_schedules():
    assert make_schedule("attention").transpoints(3, 100) == [ATTENTION_ONLY] * 3
    assert make_schedule("ssm").transpoints(3, 100) == [0, 0, 0]
    assert make_schedule(64).transpoints(2, 100) == [64, 64]
    assert make_schedule({"name": "per_layer", "P": [1, 2]}).transpoints(5, 9) == [1, 2, 1, 2, 1]
    assert make_schedule({"name": "depth", "start": 0, "end": 300}).transpoints(4, 9) == [0, 100, 200, 300]
    assert make_schedule({"name": "depth", "order": "decreasing"}).transpoints(3, 100) == [100, 50, 0]
    assert make_schedule({"name": "fraction", "f": 0.25}).transpoints(2, 100) == [25, 25]


def test_random_schedule_is_seeded_by_step_and_fixed_at_eval():
    s = make_schedule({"name": "random", "choices": [0, 64, 128]})
    assert s.transpoints(6, 256, step=3) == s.transpoints(6, 256, step=3)
    draws = {tuple(s.transpoints(6, 256, step=k)) for k in range(20)}
    assert len(draws) > 1 and all(p in (0, 64, 128) for d in draws for p in d)
    assert s.transpoints(4, 256) == [64] * 4


def test_round_trip_through_dict():
    for name in SCHEDULES:
        if name in ("fixed", "per_layer", "fraction"):
            continue
        s = make_schedule(name)
        assert make_schedule(s.to_dict()).transpoints(5, 77, 1) == s.transpoints(5, 77, 1)


@pytest.mark.parametrize("spec,match", [("nope", "unknown schedule"), ({"name": "fixed"}, "bad parameters"),
                                        ([1, 2], "schedule spec")])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(spec)


def test_annealing_starts_at_attention_and_ends_at_target():
    target = {"name": "per_layer", "P": [0, 64, 128, 192]}
    s = make_schedule({"name": "annealed", "target": target, "steps": 100})
    assert s.transpoints(4, 256, step=0) == [256] * 4
    assert s.transpoints(4, 256, step=50) == [128, 160, 192, 224]
    assert s.transpoints(4, 256, step=100) == [0, 64, 128, 192] == s.transpoints(4, 256)
    lw = make_schedule({"name": "annealed", "target": target, "steps": 100, "mode": "layerwise"})
    assert lw.transpoints(4, 256, step=0) == [256] * 4
    assert lw.transpoints(4, 256, step=25) == [256, 256, 256, 192]  # the top layer has annealed
    assert lw.transpoints(4, 256, step=60) == [256, 179, 128, 192]  # 179 = 64 + (256 - 64) * 0.6
    assert lw.transpoints(4, 256, step=100) == [0, 64, 128, 192]
    mono = [lw.transpoints(4, 256, step=k) for k in range(0, 101, 5)]
    assert all(a >= b for x, y in zip(mono, mono[1:]) for a, b in zip(x, y))  # P only moves down


def test_hybrid_keeps_the_listed_layers_on_attention():
    s = make_schedule({"name": "hybrid", "base": {"name": "fixed", "P": 128}, "attention_layers": [0, 3]})
    assert s.transpoints(5, 1024) == [ATTENTION_ONLY, 128, 128, ATTENTION_ONLY, 128]
    staggered = make_schedule({"name": "hybrid", "base": {"name": "staggered", "period": 2, "span": 64},
                               "attention_layers": [1]})
    assert staggered.transpoints(4, 64) == [0, ATTENTION_ONLY, 0, 32]
    assert make_schedule(s.to_dict()).transpoints(5, 7) == s.transpoints(5, 7)
    annealed = make_schedule({"name": "annealed", "target": s.to_dict(), "steps": 10})
    assert annealed.transpoints(5, 256, step=0) == [256] * 5 and annealed.transpoints(5, 256) == s.transpoints(5, 256)


@pytest.mark.parametrize("spec,match", [
    ({"attention_layers": [-1]}, "layer indices >= 0"), ({"attention_layers": ["2"]}, "layer indices"),
    ({"base": "nope"}, "unknown schedule")])
def test_hybrid_bad_layers_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        make_schedule({"name": "hybrid", **spec})


def test_hybrid_layer_out_of_range_is_named():
    s = make_schedule({"name": "hybrid", "base": 8, "attention_layers": [1, 6]})
    with pytest.raises(ValueError, match=r"attention_layers \[6\] out of range for 4 layers"):
        s.transpoints(4, 32)


def test_head_hybrid_keeps_the_listed_kv_heads_on_attention():
    spec = {"name": "head_hybrid", "base": {"name": "fixed", "P": 128}, "kept_heads": [[0, 1], [2, 0], [2, 2]],
            "n_kv_heads": 3}
    s = make_schedule(spec)
    A = ATTENTION_ONLY
    assert s.transpoints(4, 1024) == [[128, A, 128], 128, [A, 128, A], 128]
    assert make_schedule(s.to_dict()).transpoints(4, 1024) == s.transpoints(4, 1024)  # the saved config
    every = make_schedule({**spec, "kept_heads": [[1, 0], [1, 1], [1, 2]]})  # all heads kept: one int
    assert every.transpoints(3, 64) == [128, A, 128]
    per_layer_g = make_schedule({**spec, "kept_heads": [[1, 3]], "n_kv_heads": [2, 4]})  # GQA differs by layer
    assert per_layer_g.transpoints(2, 64) == [128, [128, 128, 128, A]]
    assert make_schedule({"name": "head_hybrid", "base": 8}).transpoints(2, 64) == [8, 8]  # nothing kept: the base


def test_head_hybrid_anneals_and_nests_per_head():
    heads = {"name": "head_hybrid", "base": {"name": "per_layer", "P": [0, 64]}, "kept_heads": [[0, 0]],
             "n_kv_heads": 2}
    annealed = make_schedule({"name": "annealed", "target": heads, "steps": 100})
    assert annealed.transpoints(2, 256, step=0) == [256, 256]  # every head at the sequence length: one int
    assert annealed.transpoints(2, 256, step=50) == [[256, 128], 160]  # a kept head: P = the length (as hybrid)
    assert annealed.transpoints(2, 256) == [[ATTENTION_ONLY, 0], 64]
    layers = make_schedule({"name": "hybrid", "base": heads, "attention_layers": [1]})
    assert layers.transpoints(2, 256) == [[ATTENTION_ONLY, 0], ATTENTION_ONLY]


@pytest.mark.parametrize("spec,match", [
    ({"kept_heads": [[0, 1]]}, "n_kv_heads .* is required"),
    ({"kept_heads": [[0, -1]], "n_kv_heads": 2}, r"\[layer, kv_head\] pairs"),
    ({"kept_heads": [3], "n_kv_heads": 2}, r"\[layer, kv_head\] pairs"),
    ({"kept_heads": [[0, 1]], "n_kv_heads": 0}, "n_kv_heads must be"),
    ({"base": "nope"}, "unknown schedule")])
def test_head_hybrid_bad_specs_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        make_schedule({"name": "head_hybrid", **spec})


def test_head_hybrid_heads_out_of_range_are_named():
    s = make_schedule({"name": "head_hybrid", "base": 8, "kept_heads": [[1, 2], [5, 0]], "n_kv_heads": 2})
    with pytest.raises(ValueError, match=r"kept_heads \[\[1, 2\], \[5, 0\]\] out of range for 4 layers"):
        s.transpoints(4, 32)
