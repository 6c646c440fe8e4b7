"""What the exporter, the service, training and the benchmarks share.

- ``contract``: the ONNX interface between ``export/`` (which writes model files) and ``serving/``
  (which loads them): the input and output names, dtypes and shapes, and the metadata keys.
- ``files``: atomic writes (a reader or a crash never sees a half-written file).
- ``text``: one-line error messages.
- ``paths``: paths as results files record them, relative to the repository.
- ``machine``: usable CPUs, the CPU's name and its bf16 units, from the OS.
- ``images``: an image file's bytes -> the model's 32x32 RGB input, with every limit checked first: the
  one decode of the service's uploads and of training's class-folder data sets.

Nothing here imports torch or onnx, so the service (which never imports torch) can use it; ``images``
alone needs Pillow and numpy, which every install of the project has.
"""
