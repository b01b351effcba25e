"""The project's root exceptions.

Every subsystem raises these (or subclasses carrying data) and wraps third-party exceptions at its boundary, so that
callers (the daemon, the CLI) can report a clear one-line reason and go on. `str(error)` is that reason.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent reports instead of crashing."""


class ConfigError(AgentError):
    """A configuration file or value is invalid."""


class ModelError(AgentError):
    """A model bundle cannot be loaded, verified or run."""


class ManifestError(ModelError):
    """The bundle's manifest is missing, malformed or inconsistent."""


class IntegrityError(ModelError):
    """A bundle file is missing, truncated, or its hash does not match the manifest."""


class ContractError(ModelError):
    """The manifest's input/output contract does not match the model's own tensors."""


class RuntimeUnavailable(ModelError):
    """The runtime a model needs is not installed or cannot load the model."""


class InputError(AgentError):
    """An input (image, tensor, sensor window) cannot be decoded or has the wrong shape."""


class SourceError(AgentError):
    """A frame or sensor source failed."""


class UpdateRejected(AgentError):
    """A model update was refused (trust, integrity, self-test)."""


class LinkError(AgentError):
    """The fleet link (MQTT) failed."""
