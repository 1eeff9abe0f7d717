"""One train step (forward + backward, CE) of the smollm2-switch.yaml student shape (random init),
8 x 256 tokens, fp32 vs bf16 autocast, 2 threads, alternating: `.venv/bin/python experiments/engine/amp_step_probe.py`."""
import time, torch, yaml
from transmamba.models.lm import LM, LMConfig
torch.manual_seed(0)
torch.set_num_threads(2)
cfg = yaml.safe_load(open("configs/convert/smollm2-switch.yaml"))["student"]
m = LM(LMConfig(vocab_size=49152, d_model=cfg["d_model"], n_layers=cfg.get("n_layers", 30), n_heads=cfg["n_heads"],
                n_kv_heads=cfg["n_kv_heads"], d_ff=cfg["d_ff"], head_dim=64, schedule=cfg["schedule"], conv_activation=None))
x = torch.randint(0, 49152, (8, 256)); y = torch.randint(0, 49152, (8, 256))
tp = m.transpoints_for(256, None)
for amp in ("none", "bf16", "none", "bf16"):
    ts = []
    for i in range(3):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            _, loss = m(x, y, transpoints=tp)
        loss.float().backward()
        ts.append(time.perf_counter() - t0)
    print(amp, [round(t, 2) for t in ts], f"{8*256/min(ts):.0f} tok/s")
