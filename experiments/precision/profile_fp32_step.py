"""torch.profiler on one fp32 distillation step (bench distill's student and batch); run under ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 to emulate an AVX2 CPU (docs/results.md, issue 35)."""
import torch, time
from torch.profiler import profile, ProfilerActivity
from transmamba.bench.distill import build, step_fn
from transmamba.training import heap
student, cfg, lm, batch = build()
heap.retain_freed_memory(True)
f = step_fn(student, cfg, lm, batch, amp="none", reference=False)
f()
t0 = time.perf_counter(); f(); print("step s", time.perf_counter() - t0)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    f()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
