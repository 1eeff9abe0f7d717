"""lm-evaluation-harness on local files: two tasks made from the shipped held-out Shakespeare.

- `tm_cloze` (LAMBADA-style, output_type loglikelihood): a passage's last word given the passage;
  acc = the word is the greedy continuation, plus its perplexity;
- `tm_nextline` (multiple_choice): which of 4 lines follows a passage (3 distractor lines from
  elsewhere in the held-out works); acc and acc_norm.

`write_tasks(dir)` writes the JSONL data and the task YAMLs (`dataset_path: json`, `data_files`
pointing at the local files); `run_lm_eval(model, tok, dir)` runs them through lm-eval's Python API
(`HFLM(pretrained=model, tokenizer=tok)`, `simple_evaluate(..., TaskManager(include_path=dir))`)
with the hub and datasets offline. Our student and a transformers teacher go through it alike.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

TASKS = ("tm_cloze", "tm_nextline")

CLOZE_YAML = """task: tm_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {file}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: " {{{{target}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

NEXTLINE_YAML = """task: tm_nextline
dataset_path: json
dataset_kwargs:
  data_files:
    test: {file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}\\n"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _lines(texts: list[str]) -> list[str]:
    return [ln.strip() for t in texts for ln in t.splitlines() if len(ln.strip().split()) >= 4]


def write_tasks(dir: str | os.PathLike, texts: list[str], n: int = 100, seed: int = 0) -> Path:
    """The two tasks' JSONL files and YAMLs under dir, n documents each, from `texts`."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    lines = _lines(texts)
    if len(lines) < 20:
        raise ValueError(f"need at least 20 lines of text to build the tasks, got {len(lines)}")
    rng = random.Random(seed)
    cloze, nextline = [], []
    for _ in range(n):
        i = rng.randrange(4, len(lines) - 1)
        passage = " ".join(lines[i - 4:i + 1]).split()
        word = passage[-1].strip(".,;:!?'\"-")
        if not word.isalpha():
            word = passage[-2].strip(".,;:!?'\"-") or "the"
            passage = passage[:-1]
        cloze.append({"context": " ".join(passage[:-1]), "target": word})
        ctx = "\n".join(lines[i - 4:i])
        choices = [lines[i]] + [lines[rng.randrange(len(lines))] for _ in range(3)]
        order = list(range(4))
        rng.shuffle(order)
        nextline.append({"context": ctx, "choices": [choices[j] for j in order], "label": order.index(0)})
    for name, rows, yaml in (("tm_cloze", cloze, CLOZE_YAML), ("tm_nextline", nextline, NEXTLINE_YAML)):
        data = dir / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (dir / f"{name}.yaml").write_text(yaml.format(file=str(data.resolve())))
    return dir


def run_lm_eval(model, tok, task_dir: str | os.PathLike, tasks=TASKS, limit: int | None = None,
                batch_size: int = 1) -> dict:
    """{task: {metric: value}} from lm-eval's simple_evaluate on our local tasks."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as e:
        raise ValueError(f"lm-eval is not installed ({e}); pip install lm-eval==0.4.13") from e
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit,
                                  task_manager=lm_eval.tasks.TaskManager(include_path=str(task_dir)))
    out = {}
    for task, metrics in res["results"].items():
        out[task] = {k.split(",")[0]: float(v) for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not k.split(",")[0].endswith("_stderr") and k != "alias"}
    return out
