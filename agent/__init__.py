"""edge-agent: a managed, self-healing inference daemon for edge devices."""

__version__ = "0.1.0"
