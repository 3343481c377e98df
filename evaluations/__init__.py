"""TensorFlow Inception evaluator (IS, FID, sFID, precision, recall) for ``.npz`` sample batches."""
