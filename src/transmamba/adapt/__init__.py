"""TransMamba-Adapt (Chen et al. 2025, arXiv 2502.15130): Transformer -> Mamba knowledge transfer.

    subclone       selective weight subcloning (generic: teacher linear weights + importance ranking)
    layered_init   fill a vision student's first n layers (and embeddings/head) from a ViT teacher
    distill        adaptive multi-directional distillation losses (+ the released-code baseline)
    cross_mamba    a language-aware visual scan for multimodal tasks

A pretrained causal LM teacher (its families, loading, the lossless check, the cached outputs and
its weights mapped onto a Switch student) lives in `transmamba.teachers`.
"""
