"""Offline joint training (labels + distillation), mirroring ``evaluation/``.

``loop`` (TrainConfig, the training loop, its state on disk), ``examples``
(what one step reads: augmentation, targets, the DataLoader's Dataset),
``distributed`` (torch.distributed context and reductions), ``report``
(the curves figure).
"""
