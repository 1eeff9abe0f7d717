"""Pretrained causal-LM teachers, from a model directory or GGUF file to a TransMamba-Switch student.

    families   which HF causal LMs convert exactly (`inspect_teacher`: a TeacherSpec or a refusal by name)
    load       load a teacher and its tokenizer (SmolLM2 from its GGUF, once, into an fp32 cache)
    to_switch  a teacher's weights -> a TransMamba-Switch LM (full-size plan, subcloning, calibration)
    check      `transmamba teacher check` and the lossless gate: full-size conversion vs the teacher's logits
    cache      the teacher's top-k log-probs and hidden states, cached on disk for distillation
"""
