"""Apply a tier's calibration: the isotonic map from raw score to P(correct).

The map is stored in the policy as breakpoints (no pickles), applied by linear interpolation.
Fitting it and picking a threshold is offline work (:mod:`routers.cascade.offline.calibration`,
``slm-gateway calibrate``).
"""

from __future__ import annotations

import numpy as np

from routers.cascade.config import Calibration


def apply_calibration(calibration: Calibration | None, score: float) -> float:
    if calibration is None:
        return score
    if not np.isfinite(score):
        return calibration.y[0] if score < 0 else calibration.y[-1]
    return float(np.interp(score, calibration.x, calibration.y))
