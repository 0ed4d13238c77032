"""The deployed artifact: ONNX export and parity, timing on ONNX Runtime / TensorRT, latency tables."""
