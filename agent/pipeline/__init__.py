"""The real-time pipeline: single-slot mailbox, inference worker with hot model swap, result sinks, snapshots."""

from agent.pipeline.active import ActiveModel, bind_model
from agent.pipeline.loop import InferenceLoop, LoopObserver, LoopSettings, warm_up
from agent.pipeline.mailbox import LatestMailbox
from agent.pipeline.records import ResultRecord, Staged, StageTimes
from agent.pipeline.sinks import CallbackSink, JsonLinesSink, Sink, ThreadedSink

__all__ = [
    "ActiveModel",
    "CallbackSink",
    "InferenceLoop",
    "JsonLinesSink",
    "LatestMailbox",
    "LoopObserver",
    "LoopSettings",
    "ResultRecord",
    "Sink",
    "StageTimes",
    "Staged",
    "ThreadedSink",
    "bind_model",
    "warm_up",
]
