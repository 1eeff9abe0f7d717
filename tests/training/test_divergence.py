"""Divergence and resume guard rails of the engine (issue 41, groups 3 and 5): an lr float32 cannot
hold is a config error; an update that overflows, and a resume from a checkpoint whose weights are
or give NaN/Inf, are one `error:` naming the step and the last good checkpoint; a checkpoint whose
config.json was edited (and checksums.json re-sealed) is refused naming the key."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transmamba.io import checkpoint as ck
from transmamba.recipes.lm import TextData, train
from transmamba.training.engine import NonFiniteLossError

V = 32


def _data():
    ids = (np.arange(3000) % V).astype(np.uint16)
    return TextData(ids, ids[:200].copy(), V, "synthetic")


def _cfg(tmp_path, arch="mamba2", **train_kw):
    model = {"arch": arch, "vocab_size": V, "d_model": 16, "n_layers": 2, "n_heads": 2, "head_dim": 8, "d_state": 8,
             "chunk_size": 8, "max_seq_len": 16, "schedule": {"name": "fixed", "P": 5}}
    tr = {"tokens": 6 * 4 * 16, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 0, "log_every": 1,
          "eval_every": 0, "eval_batches": 1, "ckpt_every": 1, "keep_checkpoints": 0, "progress": False, **train_kw}
    return {"name": "run", "out_dir": str(tmp_path / "run"), "device": "cpu", "seed": 5, "model": model, "train": tr}


def _reseal(ck_dir: Path) -> None:
    """Rewrite checksums.json over the files as they are now (what someone editing a checkpoint does)."""
    files = {n: {"size": (ck_dir / n).stat().st_size, "sha256": hashlib.sha256((ck_dir / n).read_bytes()).hexdigest()}
             for n in ("model.safetensors", "optimizer.pt", "config.json", "state.json") if (ck_dir / n).exists()}
    body = {"format": 1, "algorithm": "sha256", "files": files}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (ck_dir / "checksums.json").write_text(json.dumps({**body, "manifest_sha256": digest}))


def _tamper_weights(ck_dir: Path, name_part: str, value: float) -> str:
    """Set the first stored tensor whose name holds `name_part` to `value` and re-seal the checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = ck_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k in sd if name_part in k)
    sd[name] = torch.full_like(sd[name], value)
    save_file(sd, str(path), metadata=meta)
    _reseal(ck_dir)
    return name


class TestLearningRateOverflow:
    @pytest.mark.parametrize("grad_clip, ckpt_every", [(0.0, 0), (1.0, 0), (1.0, 1)],
                             ids=["no-clip", "clip", "clip+checkpoints"])
    def test_lr_1e300_is_a_config_error(self, tmp_path, grad_clip, ckpt_every):
        cfg = _cfg(tmp_path, lr=1e300, grad_clip=grad_clip, ckpt_every=ckpt_every)
        with pytest.raises(ValueError, match=r"config key 'train.lr' \(1e\+300\) must not exceed 3.403e\+38"):
            train(cfg, data=_data())
        assert not Path(cfg["out_dir"]).exists()

    def test_update_overflowing_float32_names_step_and_last_good_checkpoint(self, tmp_path, capsys):
        """lr 1e38 is a float32, but AdamW's first steps divide it by 1 - beta1^t < 1."""
        cfg = _cfg(tmp_path, halt_at_step=2)
        train(cfg, data=_data())
        cfg["train"].update(lr=3e38, halt_at_step=None)
        with pytest.raises(NonFiniteLossError, match=r"training diverged at step 3: the AdamW update overflows "
                                                     r"float32 .*last good checkpoint is .*step_0000002"):
            train(cfg, data=_data(), resume=True)


class TestResumeAfterDivergence:
    def test_weights_that_give_inf_are_not_checkpointed(self, tmp_path):
        """A finite A_log whose exp overflows passes a NaN/Inf check of the weights; the checkpoint
        waits for the next step's forward, which the kernel refuses, so it is never written."""
        cfg = _cfg(tmp_path, halt_at_step=2)
        train(cfg, data=_data())
        cfg["train"].update(lr=1e12, halt_at_step=None, grad_clip=0.0)
        with pytest.raises(NonFiniteLossError, match=r"diverged at step 4: the weights give A contains Inf.*"
                                                     r"last good checkpoint is .*step_0000002"):
            train(cfg, data=_data(), resume=True)
        assert [s for s, _ in ck.list_checkpoints(Path(cfg["out_dir"]) / "checkpoints")] == [1, 2]

    def test_resume_from_weights_that_give_inf_names_the_checkpoint(self, tmp_path, capsys, monkeypatch):
        cfg = _cfg(tmp_path, halt_at_step=2)
        train(cfg, data=_data())
        bad = Path(cfg["out_dir"]) / "checkpoints" / "step_0000002"
        _tamper_weights(bad, "A_log", 100.0)  # finite, but A = -exp(100) is -inf in float32
        cfg["train"]["halt_at_step"] = None
        with pytest.raises(NonFiniteLossError) as e:
            train(cfg, data=_data(), resume=True)
        msg = str(e.value)
        assert msg.startswith(f"cannot resume from {bad}: its weights diverge at once (the weights give A contains Inf")
        assert "step 3" in msg and f"the checkpoint before it is {bad.parent / 'step_0000001'}" in msg

        import yaml

        import transmamba.recipes.lm as lm_recipe
        from transmamba import cli

        monkeypatch.setattr(lm_recipe, "load_text_data", lambda c: _data())
        f = tmp_path / "run.yaml"
        f.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "out_dir"}))
        rc = cli.main(["train", "--config", str(f), "--out_dir", cfg["out_dir"], "--resume"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err
        assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [f"error: {msg}"]

    def test_resume_from_nan_weights_is_refused_by_name(self, tmp_path):
        cfg = _cfg(tmp_path, halt_at_step=2)
        train(cfg, data=_data())
        bad = Path(cfg["out_dir"]) / "checkpoints" / "step_0000002"
        name = _tamper_weights(bad, "out_proj", float("nan"))
        cfg["train"]["halt_at_step"] = None
        with pytest.raises(NonFiniteLossError, match=rf"cannot resume from {bad}: {name} is not finite .*"
                                                     rf"step_0000001"):
            train(cfg, data=_data(), resume=True)
        assert (bad / "model.safetensors").exists()  # refused, nothing rewritten


class TestEditedCheckpointConfig:
    """config.json edited and checksums.json re-sealed: the weights keep the config they were
    written with, so the edit is refused naming the key, whichever way the run is resumed."""

    @pytest.mark.parametrize("key, value", [("d_model", 24), ("n_layers", 1), ("vocab_size", 64), ("expand", 4),
                                            ("d_state", 4), ("schedule", {"name": "fixed", "P": 0})])
    def test_edited_model_key_is_refused(self, tmp_path, key, value):
        cfg = _cfg(tmp_path, halt_at_step=2)
        train(cfg, data=_data())
        ck_dir = Path(cfg["out_dir"]) / "checkpoints" / "step_0000002"
        saved = json.loads((ck_dir / "config.json").read_text())
        saved["model"][key] = value
        saved["fingerprint"]["model"][key] = value  # edited consistently, then re-sealed
        (ck_dir / "config.json").write_text(json.dumps(saved, indent=2))
        _reseal(ck_dir)
        assert ck.verify_checkpoint(ck_dir)  # the manifest alone no longer tells
        cfg["train"]["halt_at_step"] = None
        with pytest.raises(ck.CheckpointCorruptError, match=rf"config.json says model\.{key}\S*=.* but the weights "
                                                            rf"\(model.safetensors\) were written with model\.{key}"):
            train(cfg, data=_data(), resume=True)  # the run's own config
        from transmamba.recipes.lm import build_config

        with pytest.raises(ck.CheckpointCorruptError, match=rf"model\.{key}"):
            build_config(None, ["--out_dir", cfg["out_dir"]], resume=True)  # the checkpoint's config
