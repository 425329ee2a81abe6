"""Export of zoo models: ONNX, mixed-precision FP16 ONNX, TensorRT engines, and the Top-1 gate."""
