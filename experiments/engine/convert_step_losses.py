"""Per-step CE / KL / hidden losses of a tiny `transmamba convert` run (random tiny Llama teacher, 2-layer
student, 6 steps, log every step), to compare two versions of the code step by step:

    git worktree add /tmp/old 42f1869
    PYTHONPATH=/tmp/old/src OMP_NUM_THREADS=1 .venv/bin/python experiments/engine/convert_step_losses.py /tmp/cmp-old
    OMP_NUM_THREADS=1 .venv/bin/python experiments/engine/convert_step_losses.py /tmp/cmp-new
(the old loop numbers its steps from 0, the engine from 1)."""
import sys, csv, torch
from pathlib import Path
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
d = root / "teacher"
if not d.exists():
    from transmamba.teachers.load import tiny_llama
    tiny_llama(vocab_size=49152, tie_word_embeddings=True).save_pretrained(d)
try:
    from transmamba.recipes.convert import convert_main
except ImportError:
    from transmamba.convert import convert_main
cfg = root / "student.yaml"
cfg.write_text("student: {n_layers: 2, d_model: 24, n_heads: 2, n_kv_heads: 1, d_ff: 32, schedule: {name: staggered, period: 2, span: 32}}\n")
convert_main(["--teacher", str(d), "--student", str(cfg), "--quiet", "--name", "x", "--out_dir", str(root / "runs"),
  "--data.seq_len", "32", "--data.cache_windows", "8", "--data.calib_windows", "2", "--data.teacher_cache_dir", str(root / "tc"),
  "--train.tokens", str(6*4*32), "--train.batch_size", "4", "--train.warmup_steps", "2", "--train.log_every", "1",
  "--eval.batches", "1", "--eval.batch_size", "2", "--eval.speed_context", "0", "--eval.prompt_tokens", "1", "--eval.prompts", "['a']"])
for r in csv.DictReader(open(root / "runs/x/metrics.csv")):
    print(r["step"], r["loss_ce"], r["loss_kl"], r["loss_hidden"])
