"""`python -m export.trt NAME`: a zoo model to gated ONNX, FP16 ONNX and TensorRT FP16 engine files.

The command's long-standing name; the export and its command line are `export.deploy`.
"""

import sys

from export.deploy import build_parser, main

__all__ = ["build_parser", "main"]  # the command's parser and entry point

if __name__ == "__main__":
    sys.exit(main())
