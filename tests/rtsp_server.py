"""A test RTSP camera: GStreamer's RTSP server streaming a live MJPEG test pattern, run by the system python3 (gi).

Usage: /usr/bin/python3 tests/rtsp_server.py PORT [WIDTH HEIGHT FPS]
Serves rtsp://127.0.0.1:PORT/cam and prints READY on standard output once it listens. It runs until killed; the
stream tests kill it with SIGKILL mid-stream (a camera losing power) and start it again on the same port.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    """Serves the test stream until killed."""
    port = int(sys.argv[1])
    width, height, fps = (int(value) for value in sys.argv[2:5]) if len(sys.argv) >= 5 else (640, 480, 30)
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true ! video/x-raw,width={width},height={height},framerate={fps}/1,format=I420 "
        "! jpegenc ! rtpjpegpay name=pay0 pt=26 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1
    print("READY", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
