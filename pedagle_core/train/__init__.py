"""Training P-EAGLE (parallel) and EAGLE-3 (autoregressive) drafters: ``pedagle train``.

    cod.py        COD sampling of (anchor, depth) elements, document-aware
    mask.py       the training attention mask (dense SDPA / FlexAttention block mask) + attention provider
    loss.py       KL(target || draft) over the draft vocabulary, count-normalised; per-depth metrics
    partition.py  exact sequence partitioning (S segments, reverse-order gradient accumulation)
    ttt.py        test-time training steps for the autoregressive EAGLE-3 drafter
    vocab.py      draft vocabulary (d2t / t2d) and MASK token selection
    module.py     TrainableDrafter (what DDP / FSDP2 wrap)
    data.py       prompts, target regeneration, target features (online / cache), packing
    distributed.py DDP / FSDP2 / gloo glue
    trainer.py    TrainConfig, Trainer, train()
    cli.py        the ``train`` subcommand
"""

from .trainer import TrainConfig, Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
