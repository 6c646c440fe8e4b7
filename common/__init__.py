"""What the exporter, the service, training and the benchmarks share, with no dependencies at all.

- ``contract``: the ONNX interface between ``export/`` (which writes model files) and ``serving/``
  (which loads them): the input and output names, dtypes and shapes, and the metadata keys.
- ``files``: atomic writes (a reader or a crash never sees a half-written file).
- ``text``: one-line error messages.
- ``paths``: paths as results files record them, relative to the repository.

Nothing here imports torch, numpy or onnx, so the service (which never imports torch) can use it.
"""
