"""Plain-JSON values for benchmark records: NaN as null, ±inf as strings, numpy as Python.

``json.dumps(..., allow_nan=False)`` rejects NaN and infinities, and numpy scalars are not
JSON at all; the records the MoE² report builds (``gating.offline.budget_sweep``,
``gating.offline.crosscheck``) hold both. :func:`json_number` converts one figure where a record is
built, :func:`jsonable` a whole nested record just before it is written.

Unlike ``gating.planning.planner``'s plan files, a NaN here becomes ``null`` (a figure that does not
exist, such as the objective of the empty set), not the string ``"nan"``. Both conventions are the
one rule :func:`edge_moe.wire.json_float`, here with ``nan_as_null=True``; this module adds the
numpy types.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_moe.wire import json_float

logger = logging.getLogger(__name__)


def json_number(v: Any) -> float | str | None:
    """One JSON-safe float.

    Args:
        v: None or anything ``float()`` accepts (Python or numpy numbers).

    Returns:
        None for None and NaN, ``"inf"`` / ``"-inf"`` for the infinities, else ``float(v)``.
    """
    return json_float(v, nan_as_null=True)


def jsonable(v: Any) -> Any:
    """A nested record as plain JSON types.

    Dict keys become strings, tuples and arrays lists, numpy booleans and integers their
    Python types, and every float goes through :func:`json_number`. Anything else (strings,
    None) is returned as it is.
    """
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return json_number(v)
    return v
