"""The lossless bound measured (docs/results.md, issue 36): exact and perturbed full-size conversions, logit diff / the logits spread. Uses the test suite's tiny random teachers (tests/ on sys.path)."""
import torch, copy, sys
sys.path.insert(0, "tests")
from transmamba.teachers.load import load_teacher
from transmamba.teachers.check import compare_logits, convert_full_size
from tiny_teachers import TINY_FAMILIES, tiny_teacher
ids = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(0))
worst = 0
for name in sorted(TINY_FAMILIES):
    t = tiny_teacher(name); s = convert_full_size(t)
    d0, sc = compare_logits(t, s, ids); worst = max(worst, d0/sc)
    with torch.no_grad(): t.model.layers[1].mlp.down_proj.weight.mul_(1.0001)
    d1, _ = compare_logits(t, s, ids)
    print(name, f"exact {d0/sc:.1e} pert1e-4 {d1/sc:.1e}")
print("worst tiny", worst)
t0, tok = load_teacher("smollm2")
ids = torch.randint(0, 49152, (2, 256), generator=torch.Generator().manual_seed(0))
s = convert_full_size(t0)
d0, sc = compare_logits(t0, s, ids)
print("smollm2 scale", sc, "exact", d0)
for layer in (0, 15, 29):
    t = copy.deepcopy(t0)
    with torch.no_grad(): t.model.layers[layer].mlp.down_proj.weight.mul_(1.001)
    d1, _ = compare_logits(t, s, ids)
    print("smollm2 layer", layer, f"pert {d1:.3g} rel {d1/sc:.2e}")
