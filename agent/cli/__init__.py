"""The `edge-agent` command line: the daemon's face and the local debug tools."""
