"""transmamba.evaluation.lm_eval_tasks: the offline tasks through lm-eval; batching the requests
(right padding, as lm-eval does for causal LMs) gives the same numbers as one request at a time."""

import pytest
import torch

from transmamba.data.text import load_tokenizer, split_texts
from transmamba.evaluation.lm_eval_tasks import run_lm_eval, write_tasks
from transmamba.hf.modeling_transmamba import TransMambaForCausalLM
from transmamba.models.lm import LM, LMConfig


@pytest.mark.slow  # lm-eval twice over two tasks (~20 s): make test-slow, CI
def test_batched_requests_score_as_one_at_a_time(tmp_path):
    tok = load_tokenizer("smollm2")  # the shared cache/text: read from the GGUF once per machine
    torch.manual_seed(0)
    lm = LM(LMConfig(vocab_size=len(tok), d_model=16, n_layers=2, n_heads=1, head_dim=16, d_state=16, chunk_size=8,
                     schedule={"name": "per_layer", "P": [0, 12]}))
    model = TransMambaForCausalLM.from_lm(lm).eval()
    tasks = write_tasks(tmp_path / "tasks", split_texts("val"), n=20)
    one = run_lm_eval(model, tok, tasks, limit=6, batch_size=1)
    many = run_lm_eval(model, tok, tasks, limit=6, batch_size=4)
    assert set(one) == {"tm_cloze", "tm_nextline"}
    for task, metrics in one.items():
        for k, v in metrics.items():
            assert many[task][k] == pytest.approx(v, rel=1e-4), (task, k)
