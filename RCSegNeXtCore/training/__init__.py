"""Training: the paper's recipe (Section 3.1) on the preprocess cache, writing a model folder the predictor takes.

Modules: loss (Dice + CE), sampler (patches, nnU-Net's foreground oversampling), augment (batched torch augmentation),
splits (5-fold, nnU-Net format), schedule (poly lr), state (checkpoints with everything a resume needs: all RNG states), distributed (DDP),
memory (CPU memory estimate), trainer (the loop), cross_validation (held-out prediction + evaluation).
"""
