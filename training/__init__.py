"""Training CIFAR-10 classifiers on the CPU or GPUs, reproducibly.

Commands:

- ``python -m training.run --model NAME --data PATH``: train a registered model with its documented
  recipe (or ``--recipe NAME``), writing ``metrics.jsonl``, ``last.pt``, ``best.pt`` and plots each
  epoch; ``--resume DIR/last.pt`` continues a killed run exactly; under ``torchrun``, DDP.
- ``python -m training.evaluate CKPT --data PATH``: a checkpoint's test accuracy, per class and as
  a confusion matrix.

Modules: ``models`` (the architecture registry), ``recipes`` (training recipes as data), ``data``
(CIFAR-10 sources -> cached arrays -> batches on the device), ``augment`` (batched augmentation),
``engine`` (optimizer, schedule, one epoch, ``classification_metrics``), ``hardware`` (precision and
threads), ``tta`` (test-time augmentation), ``checkpoint`` (the ``Checkpoint`` and ``RunArgs``
declarations, saving and loading), ``plots``, ``run`` and ``evaluate`` (the commands).
"""
