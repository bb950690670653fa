"""A penalised logistic regression in torch float64 (Newton's method), whose kernels
`medimg.devices` pins, so that a fit has the same bytes on every CPU it verifies: the shift
report's classifier of training against test images (`medimg.evaluation.shift`) and
benchmarks/ood_tradeoff.py's logistic out-of-distribution detector."""

import numpy as np
import torch

NEWTON_STEPS = 100
NEWTON_TOLERANCE = 1e-10


def float64_tensor(array: np.ndarray) -> torch.Tensor:
    """A C-ordered float64 copy: the matmul's result depends on its operands' memory
    layout, so a reloaded model must see the layout the fitted one did."""
    return torch.tensor(np.ascontiguousarray(array, dtype=np.float64))


def logistic_fit(features: torch.Tensor, outside: torch.Tensor,
                 penalty: float) -> torch.Tensor:
    """Weights (bias last) of the logistic regression of `outside` (0 or 1) on standardised
    `features`, each class weighted to half the total, with `penalty`/2 x |w|^2 (bias not
    penalised): sklearn's LogisticRegression(C=1/penalty, class_weight="balanced")."""
    design = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    counts = torch.bincount(outside.long(), minlength=2).double()
    weight = (len(outside) / (2 * counts))[outside.long()]
    ridge = torch.full((design.shape[1],), penalty, dtype=torch.float64)
    ridge[-1] = 0.0
    coef = torch.zeros(design.shape[1], dtype=torch.float64)
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid(design @ coef)
        gradient = design.T @ (weight * (p - outside)) + ridge * coef
        hessian = (design.T * (weight * p * (1 - p))) @ design + torch.diag(ridge + 1e-9)
        step = torch.linalg.solve(hessian, gradient)
        coef = coef - step
        if float(step.abs().max()) < NEWTON_TOLERANCE:
            break
    return coef
