"""fp32 vs bf16 autocast at inference on this CPU: prefill and decode of a random demo-shaped student and SmolLM2 (docs/results.md, issue 35)."""
import torch, time
from transmamba.bench.convert import build_pair
from transmamba.evaluation.speed import decode_speed, teacher_decode_speed, time_ms
teacher, student = build_pair()
idx = torch.randint(0, 49152, (1, 1024))
for amp in ("none", "bf16", "none", "bf16"):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        ps = time_ms(lambda: student(idx), reps=2, warmup=1)
        pt = time_ms(lambda: teacher(idx, use_cache=False), reps=2, warmup=1)
        ds = decode_speed(student, 1024, 8, synthetic=True, warmup=1)[0]
        dt = teacher_decode_speed(teacher, 1024, 8, synthetic=True)[0]
    print(amp, f"prefill ms student {ps:.0f} teacher {pt:.0f}; decode ms student {ds:.1f} teacher {dt:.1f}")

# a real prefill at 2048 tokens, the teacher only
from transmamba.teachers.load import load_teacher
from transmamba.evaluation.speed import teacher_decode_speed
t, _ = load_teacher("smollm2")
for amp in ("none", "bf16"):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        syn = teacher_decode_speed(t, 2048, 6, synthetic=True)[0]
        real = teacher_decode_speed(t, 2048, 6, synthetic=False)[0]
    print(amp, f"synthetic {syn:.1f} ms, real prefill {real:.1f} ms")
