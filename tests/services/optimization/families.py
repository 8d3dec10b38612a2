"""A constraint family no backend lists: what a family added later looks like to the backends' ``supports``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from services.optimization import Constraint, ProblemModel


@dataclass(frozen=True)
class NewFamily(Constraint):
    """A family added later: no fast backend supports it until it is reviewed and listed."""

    name = "new_family"

    def write(self, builder: object) -> None:  # type: ignore[override]
        raise NotImplementedError

    def violations(self, weights: np.ndarray, model: object) -> list[str]:  # type: ignore[override]
        return []


def with_new_family(model: ProblemModel) -> ProblemModel:
    """``model`` with a ``NewFamily`` added."""
    return dataclasses.replace(model, constraints=(*model.constraints, NewFamily()))
