"""The study's shared code: data/, training/, evaluation/, serving/, and what they share."""

import os

import cv2

# Intel's IPP, inside OpenCV, picks its code by the CPU it runs on, and its paths give
# different pixels (its SSE4.2 path changes the training augmentations, so the weights):
# OpenCV's own code runs instead, the same on every x86_64 CPU with AVX2. Measured:
# docs/pipeline.md#reproducibility. The variable, not cv2.ipp.setUseIPP, which reaches
# only the calling thread and not OpenCV's pool. A value already set wins.
OPENCV_PINS = {"OPENCV_IPP": "disabled"}
for _name, _value in OPENCV_PINS.items():
    os.environ.setdefault(_name, _value)
_level = cv2.utils.logging.getLogLevel()
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
cv2.ipp.useIPP()  # OpenCV reads the variable here, once, without its warning
cv2.utils.logging.setLogLevel(_level)
