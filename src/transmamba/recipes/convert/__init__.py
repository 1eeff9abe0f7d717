"""`transmamba convert`: a pretrained causal LM -> a TransMamba-Switch student (`pipeline`), through the
stages in `stages`, the loss in `transmamba.adapt.lm_distill` and the report in
`transmamba.evaluation.convert_report`."""

from transmamba.adapt.lm_distill import DistillStep
from transmamba.evaluation.convert_report import plot_transpoint_sweep, speed_and_samples, write_report
from transmamba.recipes.convert.pipeline import (CONVERT_RULES, DEFAULTS, check_before_work, check_keep_heads,
                                                 convert, convert_main, teacher_info)
from transmamba.recipes.convert.stages import (build_student, cache_batches, distill, distill_local,
                                               keep_attention_layers, keep_kv_heads)

__all__ = ["CONVERT_RULES", "DEFAULTS", "DistillStep", "build_student", "cache_batches", "check_before_work",
           "check_keep_heads", "convert", "convert_main", "distill", "distill_local", "keep_attention_layers",
           "keep_kv_heads", "plot_transpoint_sweep", "speed_and_samples", "teacher_info", "write_report"]
