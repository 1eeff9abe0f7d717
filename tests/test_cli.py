"""The `transmamba` console script (transmamba.cli): user errors are one `error:` line and exit 2."""

import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from transmamba import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/lm/tiny.yaml")


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err[len("error: "):-1]


def test_missing_config_file(capsys, tmp_path):
    rc, out, err = _run(capsys, "train", "--config", str(tmp_path / "nope.yaml"))
    assert rc == 2 and out == ""
    assert _one_error_line(err) == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_unknown_config_key(capsys):
    rc, _, err = _run(capsys, "train", "--config", TINY, "--train.lrr", "1e-3", "--print-config")
    assert rc == 2 and _one_error_line(err).startswith("unknown config key 'train.lrr' (did you mean 'lr'?)")


def test_bad_config_values(capsys):
    rc, _, err = _run(capsys, "train", "--config", TINY, "--train.lr", "nan", "--print-config")
    assert rc == 2 and "'train.lr' must be a finite number > 0, got nan" in _one_error_line(err)
    rc, _, err = _run(capsys, "train", "--config", TINY, "--train.lr")  # an override without its value
    assert rc == 2 and _one_error_line(err) == "override --train.lr has no value (use --train.lr VALUE)"


def test_bad_yaml_is_a_user_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2\n")
    rc, _, err = _run(capsys, "train", "--config", str(bad))
    assert rc == 2 and str(bad) in _one_error_line(err) and "line 2" in err


def test_raw_yaml_error_is_a_user_error(capsys, fake_command):
    import yaml

    fake_command.append(lambda argv: yaml.safe_load("a: [1"))
    rc, _, err = _run(capsys, "fake")
    assert rc == 2 and err.startswith("error: while parsing a flow sequence") and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        cli.main(["train", "--debug", "--config", missing])  # --debug anywhere, removed before dispatch
    r = subprocess.run([sys.executable, "-m", "transmamba.cli", "--debug", "train", "--config", missing],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    assert "FileNotFoundError: config file not found" in r.stderr
    r = subprocess.run([sys.executable, "-m", "transmamba.cli", "train", "--config", missing],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr == f"error: config file not found: {missing}\n" and r.stdout == ""


def test_argparse_usage_errors_still_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--prompt", "x"])  # --checkpoint is required
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    rc, _, err = _run(capsys, "nonsense")
    assert rc == 2 and "unknown command 'nonsense'" in err


@pytest.fixture
def fake_command(monkeypatch):
    """`transmamba fake` runs whatever the test puts in `calls[0]`."""
    calls = []
    mod = types.ModuleType("fake_transmamba_cmd")
    mod.main = lambda argv: calls[0](argv)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(cli.COMMANDS, "fake", (mod.__name__, "main"))
    return calls


def _raise(exc):
    def f(argv):
        raise exc
    return f


@pytest.mark.parametrize("exc", [
    FileExistsError("runs/x already holds checkpoints"), IsADirectoryError("a dir"), PermissionError("denied"),
    NotADirectoryError("not a dir"), FloatingPointError("training loss is nan at step 4"),
    ValueError("bad value"),
])
def test_user_errors_exit_2(capsys, fake_command, exc):
    fake_command.append(_raise(exc))
    rc, _, err = _run(capsys, "fake")
    assert rc == 2 and _one_error_line(err) == str(exc)


def test_lock_and_corrupt_checkpoint_errors_exit_2(capsys, fake_command):
    from transmamba.io.checkpoint import CheckpointCorruptError
    from transmamba.training.run_lock import RunLockedError

    for exc in (RunLockedError("runs/x is in use by another run: pid 12"),
                CheckpointCorruptError("checkpoint c is corrupt: model.safetensors ...")):
        fake_command[:] = [_raise(exc)]
        rc, _, err = _run(capsys, "fake")
        assert rc == 2 and _one_error_line(err) == str(exc)


def test_bugs_keep_their_traceback(capsys, fake_command):
    fake_command.append(_raise(KeyError("lr")))
    with pytest.raises(KeyError):
        cli.main(["fake"])
    fake_command[:] = [lambda argv: sorted([1, "a"])]  # a TypeError raised outside transmamba: a bug
    with pytest.raises(TypeError):
        cli.main(["fake"])
    fake_command[:] = [lambda argv: (lambda a: a)(1, 2)]  # a wrong call is a bug even in our own code
    with pytest.raises(TypeError):
        cli.main(["fake"])


def test_typeerror_raised_on_purpose_by_transmamba_is_a_user_error(capsys, fake_command, tmp_path):
    import torch

    from transmamba.io import checkpoint as ck

    def bad_extra(argv):  # save_checkpoint's own `raise TypeError("state.json cannot hold ...")`
        ck.save_checkpoint(tmp_path / "c", torch.nn.Linear(1, 1), None, 0, {}, {"x": object()})

    fake_command.append(bad_extra)
    rc, _, err = _run(capsys, "fake")
    assert rc == 2 and _one_error_line(err) == "state.json cannot hold object"
    assert list(tmp_path.iterdir()) == []  # and nothing was left behind


def test_keyboard_interrupt_exits_130(capsys, fake_command):
    fake_command.append(_raise(KeyboardInterrupt()))
    rc, _, err = _run(capsys, "fake")
    assert rc == 130 and err.strip() == "interrupted"


def test_warnings_are_one_line(capsys, fake_command):
    def warn(argv):
        warnings.warn("skipping corrupt checkpoint step_0000002")

    fake_command.append(warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rc, _, err = _run(capsys, "fake")
    assert rc == 0 and err == "warning: skipping corrupt checkpoint step_0000002\n"
