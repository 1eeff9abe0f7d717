#!/usr/bin/env bash
# Distilled on what (issue 39; docs/results.md). One step per call, from anywhere:
#   samples    the teacher writes >= 20k tokens (transmamba teacher sample, batch 16; ~15-25 min on 2 cores)
#   ood        the out-of-domain text (software licences, data/ood_text.py) as files for eval --text
#   students   the three demo-recipe students: shakespeare.yaml, samples.yaml, mix.yaml (~6-9 min each)
#   eval       transmamba eval --suite quality on each (teacher results computed once, then reused)
#   table      the table (table.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/data_sources
R=runs/data_sources
T=.venv/bin/transmamba
case ${1:-} in
  samples)  $T teacher sample --tokens 20000 --batch-size 16 --out $R/teacher_samples --quiet ;;
  ood)      mkdir -p $R/ood && .venv/bin/python -c "
from transmamba.data.ood_text import ood_documents
label, docs = ood_documents()
for i, d in enumerate(docs): open(f'$R/ood/licence{i}.txt', 'w').write(d)
print(label)" ;;
  students) for c in shakespeare samples mix; do $T convert --teacher smollm2 --student $D/$c.yaml --quiet; done ;;
  eval)     for n in ds-shakespeare ds-samples ds-mix; do
              $T eval --model $R/$n/student --teacher smollm2 --suite quality --text "$R/ood/*.txt" \
                 --teacher-cache $R/teacher-eval; done ;;
  table)    .venv/bin/python $D/table.py ;;
  *) echo "usage: $0 samples|ood|students|eval|table"; exit 2 ;;
esac
