"""`transmamba generate` (transmamba.inference.generate): refusals with clear messages, and streamed output."""

import json

import pytest
import torch

from transmamba import cli
from transmamba.inference.generate import generate_main, generate_text
from transmamba.io import checkpoint as ck
from transmamba.models.lm import LM, LMConfig
from transmamba.hf.student import load_model

TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. "
        "JULIET: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father and refuse thy name. ") * 4


@pytest.fixture(scope="module")
def tok_cache(tmp_path_factory):
    """A small byte-level BPE saved where `load_tokenizer("bpe-300", cache)` finds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    cache = tmp_path_factory.mktemp("tokcache")
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([TEXT], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tok.save_pretrained(cache / "tokenizer-bpe-300")
    return cache, len(tok)


def _lm_checkpoint(root, cache, vocab, *, max_seq_len=64, arch="transmamba"):
    """A tiny LM run dir (root/checkpoints/step_0000001) whose config names the cached tokenizer."""
    cfg = LMConfig(vocab_size=vocab, d_model=16, n_layers=2, arch=arch, n_heads=2, n_kv_heads=1, head_dim=8,
                   d_state=8, chunk_size=8, d_ff=32, max_seq_len=max_seq_len, schedule={"name": "fixed", "P": 4})
    torch.manual_seed(0)
    model = LM(cfg)
    run_cfg = {"model": cfg.to_dict(), "data": {"tokenizer": "bpe-300", "cache_dir": str(cache)}}
    ck.save_checkpoint(root / "checkpoints" / ck.step_dir_name(1), model, None, 1, run_cfg)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok_cache):
    cache, n = tok_cache
    return _lm_checkpoint(tmp_path_factory.mktemp("lm"), cache, n)


def _cli(capsys, *argv):
    rc = cli.main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_streams_tokens_as_they_are_produced(run_dir, tok_cache, capsys):
    from transmamba.data.text import load_tokenizer

    model = load_model(run_dir)
    tok = load_tokenizer("bpe-300", tok_cache[0])
    steps, pieces = [0], []
    real_step = model.step

    def counting_step(*a, **k):
        steps[0] += 1
        return real_step(*a, **k)

    model.step = counting_step
    torch.manual_seed(0)
    text = generate_text(model, tok, "ROMEO:", max_new_tokens=12, temperature=0.9, top_k=20,
                         streamer=lambda s: pieces.append((steps[0], s)))
    assert "".join(p for _, p in pieces) == text and text.startswith("ROMEO:")
    # pieces arrive while decoding runs (after 0, 1, 2, ... steps), not all at the end
    assert len({n for n, _ in pieces}) >= 6 and pieces[0][0] == 0 and steps[0] == 11
    # same tokens as the model's own decoding loop with the same seed
    ids = torch.tensor([tok("ROMEO:")["input_ids"]])
    torch.manual_seed(0)
    ref = model.generate(ids, 12, temperature=0.9, top_k=20)
    assert tok.decode(ref[0].tolist()) == text

    rc = cli.main(["generate", "--checkpoint", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "5",
                   "--temperature", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("ROMEO:") and out.endswith("\n")
    assert generate_main(["--checkpoint", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "5",
                          "--temperature", "0", "--device", "cpu"]) + "\n" == capsys.readouterr().out == out


@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], r"--temperature must be a finite number >= 0 \(0: greedy\), got nan"),
    (["--temperature", "inf"], r"--temperature must be a finite number >= 0.*got inf"),
    (["--temperature", "-0.5"], r"--temperature must be a finite number >= 0.*got -0\.5"),
    (["--top-k", "0"], r"--top-k must be a whole number >= 1.*got 0"),
    (["--top-k", "-3"], r"--top-k must be a whole number >= 1.*got -3"),
    (["--max-new-tokens", "0"], r"--max-new-tokens must be a whole number >= 1, got 0"),
    (["--max-new-tokens", "-5"], r"--max-new-tokens must be a whole number >= 1, got -5"),
])
def test_bad_sampling_options_refused(run_dir, capsys, args, message):
    import re

    rc, out, err = _cli(capsys, "--checkpoint", run_dir, "--prompt", "hi", *args)
    assert rc == 2 and out == "" and re.fullmatch(f"error: {message}\n", err), err
    name, value = args[0][2:].replace("-", "_"), args[1]
    kw = {name: float(value) if name == "temperature" else int(value)}
    with pytest.raises(ValueError, match=message):  # the library call refuses them too
        generate_text(load_model(run_dir), None, "hi", **kw)


def test_vision_student_is_not_an_lm(tmp_path, capsys):
    from safetensors.torch import save_file

    d = tmp_path / "vim"
    d.mkdir()
    save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"format": "transmamba-vision-student",
                                               "student": {"d_model": 8}, "epoch": 1}))
    rc, out, err = _cli(capsys, "--checkpoint", d, "--prompt", "hi")
    assert rc == 2 and err.startswith(f"error: checkpoint {d} is a vision student") and "not a language model" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_dir_without_lm_keys_is_not_an_lm(tmp_path, capsys):
    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

    ck.save_checkpoint(tmp_path / "x", Lin(), None, 0, {"model": {"hidden": 4}, "data": {"tokenizer": "bpe-300"}})
    rc, _, err = _cli(capsys, "--checkpoint", tmp_path / "x", "--prompt", "hi")
    assert rc == 2 and "is not a language-model checkpoint" in err and "missing vocab_size, d_model, n_layers" in err


def test_tokenizer_larger_than_model_vocab_refused(tmp_path, tok_cache, capsys):
    cache, n = tok_cache
    small = _lm_checkpoint(tmp_path / "small", cache, n - 40)
    rc, _, err = _cli(capsys, "--checkpoint", small, "--prompt", "hi", "--device", "cpu")
    assert rc == 2 and f"the tokenizer has {n} tokens but the model in" in err and f"only {n - 40}" in err


def test_no_hard_context_cap_beyond_training_length_warns(tmp_path, tok_cache, capsys):
    """The LM has no positional limit (RoPE for any position, fixed-size SSM state): a generation
    past max_seq_len runs, with a warning naming both lengths."""
    cache, n = tok_cache
    short = _lm_checkpoint(tmp_path / "short", cache, n, max_seq_len=8)
    rc, out, err = _cli(capsys, "--checkpoint", short, "--prompt", "ROMEO:", "--max-new-tokens", "12",
                        "--device", "cpu", "--temperature", "0")
    assert rc == 0 and out.startswith("ROMEO:")
    assert err.startswith("warning: generating ") and "max_seq_len=8" in err


def test_corrupt_checkpoint_named(tmp_path, tok_cache, capsys):
    cache, n = tok_cache
    run = _lm_checkpoint(tmp_path / "r", cache, n)
    weights = run / "checkpoints" / ck.step_dir_name(1) / ck.MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    rc, _, err = _cli(capsys, "--checkpoint", run, "--prompt", "hi", "--device", "cpu")
    assert rc == 2 and "model.safetensors" in err and "step_0000001" in err and len(err.splitlines()) == 1


def test_empty_prompt_and_greedy_is_deterministic(run_dir, tok_cache):
    from transmamba.data.text import load_tokenizer

    model = load_model(run_dir)
    tok = load_tokenizer("bpe-300", tok_cache[0])
    a = generate_text(model, tok, "", max_new_tokens=4, temperature=0)
    b = generate_text(model, tok, "", max_new_tokens=4, temperature=0)
    assert a == b and len(a) > 0
