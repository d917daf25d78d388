"""The one exception tree of edge-moe.

Every error the project raises on purpose is an :class:`EdgeMoEError`. Third-party
errors are translated at the boundary and chained (``raise ... from exc``), so a
caller can catch one base class and a CLI can map it to exit code 1::

    EdgeMoEError
    ├── ConfigError          fleet YAML / device classes / CLI arguments are wrong
    ├── DataFormatError      a calibration table or profiles file is missing or malformed
    ├── SelectionError       a selection problem is ill-posed (NaN costs, shape mismatch, k < 1)
    ├── GateError            gate training, export or loading failed
    ├── ArtifactError        an exported artifact is missing, corrupt or for another device
    │   └── ParityError      an exported artifact disagrees with its reference
    ├── RunnerError          a runner cannot execute a request (bad prompt, no provider)
    ├── ProtocolError        a wire frame could not be decoded
    ├── DeadlineError        a request ran past its deadline
    └── FleetError           deployment, status or teardown of a fleet failed

Infeasible budgets are *not* errors: the selector returns a ``Selection`` whose
status says "infeasible".
"""

from __future__ import annotations


class EdgeMoEError(Exception):
    """Base class of every error edge-moe raises on purpose."""


class ConfigError(EdgeMoEError):
    """A configuration file, field or value breaks a rule."""


class DataFormatError(EdgeMoEError):
    """A data file (calibration table, profiles JSON) is missing or malformed."""


class SelectionError(EdgeMoEError):
    """A selection problem or budget is ill-posed."""


class GateError(EdgeMoEError):
    """Gate training, export or loading failed."""


class ArtifactError(EdgeMoEError):
    """An artifact is missing, corrupt, or was built for another device."""


class ParityError(ArtifactError):
    """An exported artifact disagrees with its reference beyond tolerance."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class RunnerError(EdgeMoEError):
    """A runner cannot execute a request."""


class ProtocolError(EdgeMoEError):
    """A wire frame could not be decoded: says what it got and what it expected."""


class DeadlineError(EdgeMoEError):
    """A request ran past its deadline."""


class FleetError(EdgeMoEError):
    """Deployment, status or teardown of a fleet failed."""
