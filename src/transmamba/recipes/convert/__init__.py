"""`transmamba convert`: a pretrained causal LM -> a TransMamba-Switch student (`pipeline`), through the
stages in `stages`, the loss in `transmamba.adapt.lm_distill`, the measurements of
`transmamba.evaluation.speed.speed_and_samples` and the report in `report` (the teacher-vs-student
report.md of `transmamba.evaluation.report_md`, the one `transmamba eval` writes)."""

from transmamba.adapt.lm_distill import DistillStep
from transmamba.evaluation.report_plots import plot_transpoint_sweep
from transmamba.evaluation.speed import speed_and_samples
from transmamba.recipes.convert.pipeline import (CONVERT_RULES, DEFAULTS, check_before_work, check_keep_heads,
                                                 convert, convert_main, teacher_info)
from transmamba.recipes.convert.report import report_dict, write_report
from transmamba.recipes.convert.stages import (build_student, cache_batches, distill, distill_local,
                                               keep_attention_layers, keep_kv_heads)

__all__ = ["CONVERT_RULES", "DEFAULTS", "DistillStep", "build_student", "cache_batches", "check_before_work",
           "check_keep_heads", "convert", "convert_main", "distill", "distill_local", "keep_attention_layers",
           "keep_kv_heads", "plot_transpoint_sweep", "report_dict", "speed_and_samples", "teacher_info", "write_report"]
