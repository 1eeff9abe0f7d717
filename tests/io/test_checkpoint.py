"""Atomic checkpoints (transmamba.io.checkpoint): round trip, tied weights, errors, crashes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from torch import nn

from transmamba.io import checkpoint as ck



class TiedNet(nn.Module):
    """Stand-in with a tied embedding/head (shared storage), a rank-1 gain and a buffer."""

    def __init__(self, vocab=11, d=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.proj = nn.Linear(d, d)
        self.gain = nn.Parameter(torch.ones(d))
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, idx):
        return self.head(torch.tanh(self.proj(self.emb(idx))) * self.gain * self.scale)


def _trained(seed=0, steps=2):
    torch.manual_seed(seed)
    m = TiedNet()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, 11, (3, 5))
        loss = nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m, opt


def _same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same_state(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_round_trip_weights_optimizer_step(tmp_path):
    m, opt = _trained()
    cfg = {"model": {"d": 6}, "train": {"lr": 0.01}}
    path = ck.save_checkpoint(tmp_path / "step_0000002", m, opt, 2, cfg, {"metrics": {"val_loss": 1.25}})
    assert sorted(os.listdir(path)) == ["checksums.json", "config.json", "model.safetensors", "optimizer.pt",
                                        "state.json"]

    torch.manual_seed(123)
    m2 = TiedNet()
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    out = ck.load_checkpoint(path, m2, opt2)
    assert out["restored"] == ["model", "optimizer"]
    assert out["step"] == 2 and out["config"] == cfg and out["state"]["metrics"] == {"val_loss": 1.25}
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert m2.head.weight is m2.emb.weight  # still tied
    _same_state(opt.state_dict(), opt2.state_dict())

    # both continue identically
    idx = torch.randint(0, 11, (2, 4))
    for model, o in ((m, opt), (m2, opt2)):
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        o.zero_grad()
        loss.backward()
        o.step()
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_tied_weights_stored_once(tmp_path):
    m, opt = _trained()
    path = ck.save_checkpoint(tmp_path / "c", m, None, 0, {})
    with safe_open(str(path / ck.MODEL_FILE), "pt") as f:
        keys = set(f.keys())
        aliases = json.loads(f.metadata()["aliases"])
    assert len(keys & {"emb.weight", "head.weight"}) == 1
    assert set(aliases) | (keys & {"emb.weight", "head.weight"}) == {"emb.weight", "head.weight"}
    sd = ck.load_state_dict(path)
    assert torch.equal(sd["head.weight"], m.emb.weight)
    assert not (path / ck.OPTIM_FILE).exists()


def test_load_without_model_returns_state_dict(tmp_path):
    m, opt = _trained()
    path = ck.save_checkpoint(tmp_path / "c", m, opt, 7, {"a": 1})
    out = ck.load_checkpoint(path)
    assert out["restored"] == [] and out["step"] == 7
    assert torch.equal(out["state_dict"]["proj.weight"], m.proj.weight)


def test_errors_missing_and_mismatch(tmp_path):
    m, opt = _trained()
    with pytest.raises(FileNotFoundError, match="not found"):
        ck.load_checkpoint(tmp_path / "nothing", m)
    path = ck.save_checkpoint(tmp_path / "c", m, None, 1, {})
    with pytest.raises(FileNotFoundError, match="optimizer.pt"):
        ck.load_checkpoint(path, m, opt)
    with pytest.raises(ValueError, match=r"shape mismatch for tensor 'gain'.*has \(6,\), model expects \(8,\)"):
        ck.load_checkpoint(path, TiedNet(d=8))
    with pytest.raises(ValueError, match=r"'extra\.weight'"):
        bigger = TiedNet()
        bigger.extra = nn.Linear(2, 2)
        ck.load_checkpoint(path, bigger)
    (path / ck.STATE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="state.json"):
        ck.load_checkpoint(path, m)
    with pytest.raises(ValueError, match="reserved"):
        ck.save_checkpoint(tmp_path / "d", m, None, 1, {}, {"step": 3})


def test_crash_during_save_keeps_previous(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    m, opt = _trained()
    prev = ck.save_checkpoint(root / ck.step_dir_name(1), m, opt, 1, {"v": 1})
    before = {p.name: p.read_bytes() for p in prev.iterdir()}

    m2, opt2 = _trained(seed=1, steps=3)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", boom)  # fails after model.safetensors is written
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(root / ck.step_dir_name(2), m2, opt2, 2, {"v": 2})
    with pytest.raises(OSError, match="disk full"):  # overwriting the same name fails too
        ck.save_checkpoint(prev, m2, opt2, 2, {"v": 2})
    assert sorted(p.name for p in root.iterdir()) == [ck.step_dir_name(1)]  # no partial dir
    assert {p.name: p.read_bytes() for p in prev.iterdir()} == before
    assert ck.latest_checkpoint(root) == prev
    m3, opt3 = TiedNet(), None
    assert ck.load_checkpoint(prev, m3)["step"] == 1
    assert torch.equal(m3.proj.weight, m.proj.weight)


def test_hard_kill_during_save_leaves_no_checkpoint_under_its_name(tmp_path):
    """A process killed mid-write (os._exit) leaves only a .tmp- dir, ignored and then cleaned."""
    root = tmp_path / "checkpoints"
    m, opt = _trained()
    prev = ck.save_checkpoint(root / ck.step_dir_name(1), m, opt, 1, {"v": 1})
    script = textwrap.dedent(f"""
        import os, torch
        from transmamba.io import checkpoint as ck
        m = torch.nn.Linear(3, 3)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        save = torch.save
        def die(*a, **k):
            save(*a, **k)
            os._exit(9)
        torch.save = die  # killed after weights and optimizer are on disk
        ck.save_checkpoint({str(root / ck.step_dir_name(2))!r}, m, opt, 2, {{}})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    names = sorted(p.name for p in root.iterdir())
    assert ck.step_dir_name(2) not in names
    assert any(".tmp-" in n for n in names)
    assert ck.latest_checkpoint(root) == prev
    removed = ck.clean_partial(root)
    assert len(removed) == 1 and sorted(p.name for p in root.iterdir()) == [ck.step_dir_name(1)]


def test_latest_prune_resolve(tmp_path):
    m, _ = _trained(steps=0)
    run = tmp_path / "run"
    root = run / "checkpoints"
    for s in (3, 10, 7):
        ck.save_checkpoint(root / ck.step_dir_name(s), m, None, s, {})
    (root / "step_0000099.tmp-abc").mkdir()  # partial: ignored
    assert [s for s, _ in ck.list_checkpoints(root)] == [3, 7, 10]
    assert ck.latest_checkpoint(root).name == ck.step_dir_name(10)
    assert ck.resolve_checkpoint(run) == root / ck.step_dir_name(10)
    assert ck.resolve_checkpoint(root / ck.step_dir_name(3)) == root / ck.step_dir_name(3)
    ck.prune_checkpoints(root, keep=2)
    assert [s for s, _ in ck.list_checkpoints(root)] == [7, 10]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ck.resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.resolve_checkpoint(tmp_path / "nope")


def test_load_model_real_lm(tmp_path):
    lm = pytest.importorskip("transmamba.models.lm")
    cfg = lm.LMConfig.from_dict({"vocab_size": 37, "d_model": 32, "n_layers": 2, "arch": "transmamba",
                                 "n_heads": 2, "n_kv_heads": 2, "d_state": 16, "head_dim": 16, "d_ff": 64,
                                 "max_seq_len": 32})
    torch.manual_seed(0)
    model = lm.LM(cfg)
    path = ck.save_checkpoint(tmp_path / "checkpoints" / ck.step_dir_name(0), model, None, 0,
                              {"model": cfg.to_dict()})
    from transmamba.hf.student import load_model

    loaded = load_model(tmp_path)
    assert not loaded.training
    idx = torch.randint(0, 37, (2, 9))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert path == ck.resolve_checkpoint(tmp_path)
