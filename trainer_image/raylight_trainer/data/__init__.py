"""Images in, tensors out:

- `datasets`: digits, CIFAR-10/100, ImageFolder, synthetic; transforms on the loader or on the
  device (`load_data`, `ImageData`, `TensorTransform`, `BatchTransform`).
- `cache`: datasets on object storage, fetched once per node into a bounded cache (`cached_dataset`).

Imports `runtime` alone of the trainer: never `training`, `tuning`, `tracking` or `console`.
"""
