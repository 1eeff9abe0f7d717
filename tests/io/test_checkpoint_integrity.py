"""Checkpoint integrity (transmamba.io.checkpoint): checksums, fallback past corrupt checkpoints, no NaN saves.

(No tests/io/__init__.py: a test package named `io` would shadow the standard library's io module.)
"""

import json
import warnings

import pytest
import torch
from torch import nn

from transmamba.io import checkpoint as ck


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.tanh(self.proj(self.emb(idx))))


def _trained(seed=0):
    torch.manual_seed(seed)
    m = Net()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    idx = torch.randint(0, 11, (3, 5))
    loss = nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    opt.step()
    return m, opt


def _run(tmp_path, steps=(1, 2)):
    """A checkpoints dir with a model + optimizer checkpoint at each step."""
    root = tmp_path / "checkpoints"
    m, opt = _trained()
    for s in steps:
        ck.save_checkpoint(root / ck.step_dir_name(s), m, opt, s, {"model": {"d": 6}})
    return root, m, opt


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_checksums_cover_every_file(tmp_path):
    root, _, _ = _run(tmp_path, steps=(1,))
    path = root / ck.step_dir_name(1)
    manifest = json.loads((path / ck.MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {ck.MODEL_FILE, ck.OPTIM_FILE, ck.CONFIG_FILE, ck.STATE_FILE}
    for name, entry in manifest["files"].items():
        assert entry["size"] == (path / name).stat().st_size and entry["sha256"] == ck.file_digest(path / name)
    assert ck.read_state(path)["checksums"] == ck.MANIFEST_FILE
    assert ck.verify_checkpoint(path) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact checkpoint loads without any warning
        assert ck.latest_checkpoint(root) == path
        ck.load_checkpoint(path, Net(), torch.optim.AdamW(Net().parameters()))


def test_bit_flip_in_weights_falls_back_to_previous_checkpoint(tmp_path):
    root, m, opt = _run(tmp_path)
    newest = root / ck.step_dir_name(2)
    _flip_middle_byte(newest / ck.MODEL_FILE)
    with pytest.warns(ck.CheckpointSkippedWarning, match=r"step_0000002.*model\.safetensors.*sha256") as rec:
        assert ck.latest_checkpoint(root) == root / ck.step_dir_name(1)
    assert "using step_0000001" in str(rec[0].message)
    assert ck.latest_checkpoint(root, verify=False) == newest  # the unverified view still sees it
    with pytest.raises(ck.CheckpointCorruptError, match=r"step_0000002 is corrupt: model\.safetensors") as e:
        ck.load_checkpoint(newest, Net())
    assert e.value.file == ck.MODEL_FILE and e.value.checkpoint == newest
    with pytest.raises(ck.CheckpointCorruptError, match="model.safetensors"):
        ck.load_state_dict(newest)
    assert ck.read_config(newest) == {"model": {"d": 6}}  # config.json itself is intact
    # resume then continues from step 1 with exactly the weights saved there
    m2 = Net()
    assert ck.load_checkpoint(root / ck.step_dir_name(1), m2)["step"] == 1
    assert torch.equal(m2.proj.weight, m.proj.weight)


def test_truncated_optimizer_falls_back_and_names_the_file(tmp_path):
    root, _, _ = _run(tmp_path)
    newest = root / ck.step_dir_name(2)
    _truncate(newest / ck.OPTIM_FILE)
    with pytest.warns(ck.CheckpointSkippedWarning, match=r"step_0000002.*optimizer\.pt has \d+ bytes.*truncated"):
        assert ck.latest_checkpoint(root) == root / ck.step_dir_name(1)
    m, opt = Net(), torch.optim.AdamW(Net().parameters())
    with pytest.raises(ck.CheckpointCorruptError, match=r"optimizer\.pt has \d+ bytes where checksums\.json records"):
        ck.load_checkpoint(newest, m, opt)
    assert ck.load_checkpoint(newest, Net())["step"] == 2  # the weights alone are still intact


def test_only_checkpoint_corrupt_is_a_clear_error(tmp_path):
    root, _, _ = _run(tmp_path, steps=(5,))
    _flip_middle_byte(root / ck.step_dir_name(5) / ck.MODEL_FILE)
    with pytest.raises(ck.CheckpointCorruptError, match=r"no intact checkpoint in .*checkpoints.*model\.safetensors") as e:
        ck.latest_checkpoint(root)
    assert e.value.file == ck.MODEL_FILE and e.value.checkpoint == root / ck.step_dir_name(5)
    with pytest.raises(ck.CheckpointCorruptError, match="model.safetensors"):
        ck.resolve_checkpoint(tmp_path)  # a run dir: generate and resume see the same error
    root2, _, _ = _run(tmp_path / "b", steps=(1, 2))
    for s in (1, 2):
        _truncate(root2 / ck.step_dir_name(s) / ck.CONFIG_FILE)
    with pytest.raises(ck.CheckpointCorruptError, match=r"newest \(and the 1 older ones\).*config\.json"):
        ck.latest_checkpoint(root2)


def test_damaged_manifest_and_unlisted_files(tmp_path):
    root, _, _ = _run(tmp_path, steps=(1,))
    path = root / ck.step_dir_name(1)
    manifest = path / ck.MANIFEST_FILE
    good = manifest.read_text()

    data = json.loads(good)  # a recorded checksum altered: the manifest's own digest catches it
    data["files"][ck.MODEL_FILE]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(ck.CheckpointCorruptError, match=r"checksums\.json does not match its own checksum"):
        ck.verify_checkpoint(path)
    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(ck.CheckpointCorruptError, match=r"checksums\.json is not valid JSON"):
        ck.read_config(path)
    manifest.unlink()  # state.json says there is one
    with pytest.raises(ck.CheckpointCorruptError, match=r"checksums\.json is missing"):
        ck.load_checkpoint(path, Net())
    manifest.write_text(good)

    _flip_middle_byte(path / ck.STATE_FILE)
    with pytest.raises(ck.CheckpointCorruptError, match=r"state\.json does not match"):
        ck.read_state(path)

    model_only = ck.save_checkpoint(tmp_path / "m", Net(), None, 0, {})
    (model_only / ck.OPTIM_FILE).write_bytes(b"junk")
    with pytest.raises(ck.CheckpointCorruptError, match=r"optimizer\.pt is not covered by checksums\.json"):
        ck.load_checkpoint(model_only, Net())


def _make_old_format(path):
    """What save_checkpoint wrote before checksums: no checksums.json, no "checksums" in state.json."""
    (path / ck.MANIFEST_FILE).unlink()
    state = json.loads((path / ck.STATE_FILE).read_text())
    del state["checksums"]
    (path / ck.STATE_FILE).write_text(json.dumps(state))


def test_old_format_checkpoint_still_loads(tmp_path):
    root, m, opt = _run(tmp_path, steps=(3,))
    path = root / ck.step_dir_name(3)
    _make_old_format(path)
    with pytest.warns(ck.UnverifiedCheckpointWarning, match="written before checksums"):
        assert ck.latest_checkpoint(root) == path
    m2, opt2 = Net(), torch.optim.AdamW(Net().parameters())
    with pytest.warns(ck.UnverifiedCheckpointWarning):
        out = ck.load_checkpoint(path, m2, torch.optim.AdamW(m2.parameters()))
    assert out["step"] == 3 and out["restored"] == ["model", "optimizer"]
    assert torch.equal(m2.proj.weight, m.proj.weight)
    # damage an old checkpoint can still show (unreadable file) is reported, not loaded
    _truncate(path / ck.MODEL_FILE, keep=0.3)
    with pytest.warns(ck.UnverifiedCheckpointWarning), pytest.raises(ck.CheckpointCorruptError,
                                                                     match=r"model\.safetensors cannot be read"):
        ck.load_state_dict(path)


def test_refuses_to_save_nan_or_inf(tmp_path):
    m, opt = _trained()
    with torch.no_grad():
        m.proj.bias[2] = float("nan")
    target = tmp_path / "checkpoints" / ck.step_dir_name(4)
    with pytest.raises(ck.NonFiniteTensorError, match=r"model tensor 'proj\.bias' \(6,\) holds 1 NaN and 0 Inf") as e:
        ck.save_checkpoint(target, m, opt, 4, {})
    assert e.value.tensor == "proj.bias"
    assert not (tmp_path / "checkpoints").exists() or list((tmp_path / "checkpoints").iterdir()) == []

    m, opt = _trained()
    prev = ck.save_checkpoint(target, m, opt, 4, {})
    before = {p.name: p.read_bytes() for p in prev.iterdir()}
    opt.state[m.proj.weight]["exp_avg_sq"][0, 0] = float("inf")
    with pytest.raises(ck.NonFiniteTensorError, match=r"optimizer state 'exp_avg_sq of parameter proj\.weight'.*1 Inf"):
        ck.save_checkpoint(target, m, opt, 5, {})
    assert {p.name: p.read_bytes() for p in prev.iterdir()} == before  # the good one is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_error_types_are_value_errors():
    """The CLI reports both as user errors (`error: ...`, exit 2); they survive pickling."""
    import pickle

    assert issubclass(ck.CheckpointCorruptError, ValueError) and issubclass(ck.NonFiniteTensorError, ValueError)
    e = pickle.loads(pickle.dumps(ck.CheckpointCorruptError("x", checkpoint="/a", file="model.safetensors")))
    assert str(e) == "x"
