"""Run by tests/teachers/test_cache_distributed.py, in one process or under torchrun: builds the teacher
cache of the tiny random Llama (tiny_fixtures.tiny_llama, seed 2) into OUT/cache with no process group up
(as the convert recipe calls it under torchrun), then starts a gloo group and, through it, tries one
whose hidden states turn NaN in windows 3..5 only (into OUT/nan); each rank writes OUT/rank<r>.json with
the windows its teacher computed, a hash of the whole cache as that rank reads it, and the error of
the NaN build.

    python -m torch.distributed.run --standalone --nproc_per_node N cache_build_script.py OUT
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_fixtures
from tiny_fixtures import tiny_llama  # noqa: E402

from transmamba.teachers.cache import TeacherCache, build_teacher_cache  # noqa: E402

L, N, K, B = 16, 10, 8, 3  # batches of windows 0-2, 3-5, 6-8, 9


class Recording(torch.nn.Module):
    """The teacher, recording the first token of each window it sees; NaN hidden states for `bad` windows."""

    def __init__(self, model, starts_of_bad=()):
        super().__init__()
        self.model, self.config, self.seen, self.bad = model, model.config, [], set(starts_of_bad)

    def forward(self, input_ids, **kw):
        o = self.model(input_ids=input_ids, **kw)
        firsts = input_ids[:, 0].tolist()
        self.seen += firsts
        if self.bad & set(firsts):
            o.hidden_states = tuple(h * float("nan") for h in o.hidden_states)
        return o


if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    ids = np.random.default_rng(0).integers(0, 64, size=1000).astype(np.uint16)
    teacher = Recording(tiny_llama(seed=2))
    path = build_teacher_cache(teacher, ids, out / "cache", seq_len=L, n_windows=N, top_k=K, hidden_layers=(0, 1, -1),
                               batch_size=B, progress=False)
    group_after_first = dist.is_initialized()  # the first build, run with no group up, makes and ends its own
    if "RANK" in os.environ:
        dist.init_process_group("gloo")  # as the engine does later; the second build uses this group
    tc = TeacherCache(path)  # every rank reads the whole cache
    h = hashlib.sha1()
    for a in (tc.tokens, tc.topk_idx, tc.topk_logp, *tc.hidden.values()):
        h.update(np.ascontiguousarray(a).tobytes())
    window_of = {int(t): i for i, t in enumerate(tc.tokens[:, 0])}  # first tokens differ (checked by the test)
    bad_firsts = [int(t) for t in tc.tokens[3:6, 0]]
    error = None
    try:
        build_teacher_cache(Recording(tiny_llama(seed=2), bad_firsts), ids, out / "nan", seq_len=L, n_windows=N,
                            top_k=K, hidden_layers=(1,), batch_size=B, progress=False)
    except FloatingPointError as e:
        error = str(e)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "windows": sorted(window_of[t] for t in teacher.seen), "sha1": h.hexdigest(), "n": len(tc),
        "distinct_firsts": len(window_of), "nan_error": error,
        "group_after_first": group_after_first}))
    if dist.is_initialized():
        dist.destroy_process_group()
