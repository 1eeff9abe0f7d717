"""TransMamba-Adapt (Chen et al. 2025, arXiv 2502.15130): Transformer -> Mamba knowledge transfer.

    subclone       selective weight subcloning (generic: teacher linear weights + importance ranking)
    layered_init   fill a vision student's first n layers (and embeddings/head) from a ViT teacher
    distill        adaptive multi-directional distillation losses (+ the released-code baseline)
    cross_mamba    a language-aware visual scan for multimodal tasks
    hf_families    which HF causal LMs convert exactly (inspect_teacher: a TeacherSpec or a refusal)
    llama_to_switch  a Transformer LM -> a TransMamba-Switch LM (subcloning, layered init)
    teacher_check  `transmamba teacher check`: full-size conversion vs the teacher's logits
"""
