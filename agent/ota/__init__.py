"""The device's updater: signed model delivery over MQTT (TUF trust through python-tuf, block transfer, install)."""
