"""The `edge-agent` command line: the daemon's face and the local debug tools."""

import os

# Keep the runtimes' own chatter (OpenCV decoder warnings, TFLite delegate notices) off the terminal: the CLI
# reports problems itself, one line each. Set before cv2 / LiteRT are imported; the caller's own setting wins.
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
