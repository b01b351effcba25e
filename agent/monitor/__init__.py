"""Pure monitors, no I/O: latency histograms and loop metrics, anomaly episodes (from results and operational), data
drift against the reference.

The daemon feeds them from the inference thread (`LoopObserver.on_record`) and reads them from others; the clock is
always the caller's (`now` arguments), so every figure can be reproduced in a test.
"""

from agent.monitor.anomaly import AnomalyRules, AnomalyTracker, Finding, assess
from agent.monitor.calibration import Calibration, calibrate
from agent.monitor.drift import BaselineJob, DriftMonitor, WindowReport
from agent.monitor.episodes import Episode, Hysteresis
from agent.monitor.features import FeatureSpec, spec_for
from agent.monitor.histogram import LatencyHistogram
from agent.monitor.metrics import STAGES, LoopMetrics, RateWindow
from agent.monitor.operational import OperationalMonitor, OperationalRules, Window

__all__ = [
    "STAGES",
    "AnomalyRules",
    "AnomalyTracker",
    "BaselineJob",
    "Calibration",
    "DriftMonitor",
    "Episode",
    "FeatureSpec",
    "Finding",
    "Hysteresis",
    "LatencyHistogram",
    "LoopMetrics",
    "OperationalMonitor",
    "OperationalRules",
    "RateWindow",
    "Window",
    "WindowReport",
    "assess",
    "calibrate",
    "spec_for",
]
