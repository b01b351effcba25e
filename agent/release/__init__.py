"""The release format, shared by the operator side (`agent.fleet`) and the device's updater (`agent.ota`).

What both ends of a signed model delivery agree on, and nothing else: the bundle archive (a reproducible, uncompressed
tar) and its safe unpacking, the block index (content-defined chunks), the TUF target layout and the `custom` schema
of a release target, the desired-state payload, and the repository request/response contract over MQTT.
Pure formats and file helpers: no network, no trust decisions (those are python-tuf's).
"""
