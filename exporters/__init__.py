"""Artifact producers: LLM and encoder exports to ONNX, quantised variants, TensorRT, parity."""

import logging

# torch.onnx logs "torchvision is not installed. Skipping torchvision::nms" (and 3 more) on every
# export; our graphs use none of those ops, so keep the export output readable.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
