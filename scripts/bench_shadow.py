#!/usr/bin/env python3
"""Shadow evaluation's cost and the activation pause, measured side by side in one run, on the agent's own loop.

The active model and the candidate are the Raspberry-Pi-class INT8 model of scripts/heavy_model.py (one thread each),
fed by a real video source through the whole loop (capture, pre-process, invoke, decode, the monitors); the shadow is
the daemon's `ShadowTee` (every item offered, `--share` of one core, its worker at nice 19). Runs with the shadow off
and on are interleaved, round after round.

1. Waiting on its source (the usual camera: the video paced at half the bare rate): the loop's throughput with the
   shadow on against off (target >= 0.97), and its frame age p99 against off plus one candidate invoke (target: at
   most that).
2. Compute-bound (the video paced at 1.5x the bare rate, faster than the model): throughput with the shadow on against
   off (target >= 0.9), and the share of one core the shadow actually got.
3. Activation pause: the longest gap between two results across a hot swap (`InferenceLoop.swap` to the loaded
   candidate) against the median gap and one invoke (target: at most the median gap plus one invoke).

    .venv/bin/python scripts/bench_shadow.py [--rounds 3] [--seconds 6] [--share 0.2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_loop import bare_rate, make_video  # noqa: E402

from agent.config import AgentConfig  # noqa: E402
from agent.daemon.observer import MonitorPorts, Monitors  # noqa: E402
from agent.daemon.ports import Reporter  # noqa: E402
from agent.events import AgentEvent  # noqa: E402
from agent.inference import Model, RuntimeOptions  # noqa: E402
from agent.inference.inputs import synthetic_input  # noqa: E402
from agent.pipeline import ActiveModel, CallbackSink, InferenceLoop, LatestMailbox, LoopSettings, Staged  # noqa: E402
from agent.pipeline.shadow import ShadowTee  # noqa: E402
from agent.sources import SourceRunner, open_source  # noqa: E402
from agent.sources.config import VideoConfig  # noqa: E402

PACED_TARGET = 0.97
BOUND_TARGET = 0.90


def load(bundle: Path) -> Model:
    model = Model.load(bundle, RuntimeOptions(num_threads=1))
    for _ in range(3):
        model.infer(synthetic_input(model.manifest.input, (1, 3, 224, 224)))
    return model


def run(
    bundle: Path,
    video: Path,
    seconds: float,
    state: Path,
    rate: float,
    share: float | None,
    swap: bool = False,
) -> dict[str, float]:
    """One loop run; with `share`, the shadow on at that CPU share; with `swap`, a hot swap in the middle."""
    model = load(bundle)
    candidate = load(bundle) if share is not None or swap else None
    config = AgentConfig(state_dir=state)
    events: list[AgentEvent] = []
    active = ActiveModel(model)
    monitors = Monitors(
        MonitorPorts(config.monitor, config.snapshots, state, Reporter(events.append)), active
    )
    done_at: list[float] = []
    sinks: list[object] = [CallbackSink("times", lambda _record: done_at.append(time.perf_counter()))]
    tee = None
    if share is not None and candidate is not None:
        tee = ShadowTee(ActiveModel(candidate), every_n=1, cpu_share=share)
        sinks.append(tee)
    loop = InferenceLoop(
        active, LatestMailbox[Staged](), sinks=sinks, observer=monitors, settings=LoopSettings()
    )  # type: ignore[arg-type]
    source = VideoConfig(path=video, loop=True, rate=rate)
    runner = SourceRunner(open_source(source), source, loop.deliver)
    loop.start()
    runner.start()
    time.sleep(1.0)
    before, start = loop.progress, time.perf_counter()
    swapped_at = None
    if swap and candidate is not None:
        time.sleep(seconds / 2)
        swapped_at = time.perf_counter()
        loop.swap(ActiveModel(candidate))
        time.sleep(seconds / 2)
    else:
        time.sleep(seconds)
    elapsed = time.perf_counter() - start
    done = loop.progress - before
    snapshot = monitors.snapshot()
    shadow = tee.stats.to_dict() if tee is not None else {}
    runner.stop()
    loop.stop()
    if tee is not None:
        tee.close()
    monitors.close()
    model.close()
    if candidate is not None:
        candidate.close()
    times = [t for t in done_at if t >= start]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    pause = None
    if swapped_at is not None:
        pause = max(
            (b - a for a, b in itertools.pairwise(times) if a <= swapped_at + 0.5 and b >= swapped_at - 0.5),
            default=float("nan"),
        )
    return {
        "rate": done / elapsed,
        "age_p99": snapshot["frame_age_ms"]["p99"],
        "invoke_p50": snapshot["latency_ms"]["invoke"]["p50"],
        "gap_median_ms": 1000 * statistics.median(gaps) if gaps else float("nan"),
        "pause_ms": float("nan") if pause is None else 1000 * pause,
        "share_got": float(shadow.get("share_got") or 0.0),
        "compared": float(shadow.get("compared") or 0),
        "shadow_p50": float((shadow.get("latency_ms") or {}).get("p50") or float("nan")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--share", type=float, default=0.2, help="the shadow's CPU share (default 0.2)")
    args = parser.parse_args()
    from heavy_model import build  # scripts/heavy_model.py (needs onnx, a dev tool)

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        bundle = build(work / "heavy-cls")
        video = work / "video.mp4"
        make_video(video)
        probe = load(bundle)
        tensor = probe.prepare(synthetic_input(probe.manifest.input, (1, 3, 224, 224))).tensor.copy()
        probe.close()
        bare = bare_rate(bundle / "model.onnx", tensor, 3.0)
        print(f"bare ONNX Runtime: {bare:.1f} invokes/s (1 thread)")
        paced, bound, ages, pauses = [], [], [], []
        for round_no in range(1, args.rounds + 1):
            off = run(bundle, video, args.seconds, work / f"a{round_no}", 0.5 * bare, None)
            on = run(bundle, video, args.seconds, work / f"b{round_no}", 0.5 * bare, args.share)
            paced.append(on["rate"] / off["rate"])
            ages.append((on["age_p99"], off["age_p99"] + on["shadow_p50"]))
            print(
                f"round {round_no} waiting on its source: {off['rate']:.1f}/s off, {on['rate']:.1f}/s on "
                f"(ratio {paced[-1]:.3f}); frame age p99 {off['age_p99']:.1f} ms off, {on['age_p99']:.1f} ms on "
                f"(limit {ages[-1][1]:.1f} = off + one candidate invoke); shadow compared {on['compared']:.0f}, "
                f"got {on['share_got']:.3f} of a core"
            )
            off = run(bundle, video, args.seconds, work / f"c{round_no}", 1.5 * bare, None)
            on = run(bundle, video, args.seconds, work / f"d{round_no}", 1.5 * bare, args.share)
            bound.append((on["rate"] / off["rate"], on["share_got"]))
            print(
                f"round {round_no} compute-bound: {off['rate']:.1f}/s off, {on['rate']:.1f}/s on "
                f"(ratio {bound[-1][0]:.3f}); the shadow got {on['share_got']:.3f} of a core "
                f"(asked {args.share:g}), compared {on['compared']:.0f}"
            )
            swap = run(bundle, video, args.seconds, work / f"e{round_no}", 0.5 * bare, None, swap=True)
            pauses.append((swap["pause_ms"], swap["gap_median_ms"], swap["invoke_p50"]))
            print(
                f"round {round_no} hot swap: longest gap across it {swap['pause_ms']:.1f} ms, median gap "
                f"{swap['gap_median_ms']:.1f} ms, one invoke {swap['invoke_p50']:.1f} ms"
            )
    ratio = statistics.median(paced)
    age_ok = sum(on <= limit for on, limit in ages) * 2 > len(ages)
    bound_ratio = statistics.median(ratio for ratio, _ in bound)
    got = statistics.median(got for _, got in bound)
    pause, gap, invoke = (statistics.median(values) for values in zip(*pauses, strict=True))
    print()
    print(f"waiting on its source: throughput ratio {ratio:.3f} (target >= {PACED_TARGET}) "
          f"{'OK' if ratio >= PACED_TARGET else 'MISSED'}; frame age p99 within off + one invoke in most rounds: "
          f"{'OK' if age_ok else 'MISSED'}")  # fmt: skip
    print(f"compute-bound: throughput ratio {bound_ratio:.3f} (target >= {BOUND_TARGET}) "
          f"{'OK' if bound_ratio >= BOUND_TARGET else 'MISSED'}; the shadow got {got:.3f} of a core")  # fmt: skip
    print(f"activation pause: {pause:.1f} ms against median gap {gap:.1f} ms + one invoke {invoke:.1f} ms "
          f"{'OK' if pause <= gap + invoke else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
