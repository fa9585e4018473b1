"""Validation of :class:`~thor_planner.optim.thor.THOR`'s constructor arguments: one ``ValueError``
per mistake, naming the argument, its value and what it must be."""

from __future__ import annotations

from thor_planner.optim.precondition import GRAFTS


def check_arguments(*, lr, momentum, weight_decay, nesterov, kl_clip, split, planned: bool, graft, betas, eps,
                    max_skipped_steps) -> None:
    """Raise ``ValueError`` for the first invalid argument (``planned``: a plan was given)."""
    for what, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not value >= 0:
            raise ValueError(f"Invalid {what}={value}: must be >= 0")
    if nesterov and momentum == 0:
        raise ValueError("Invalid nesterov=True: Nesterov momentum requires momentum > 0")
    if kl_clip is not None and not kl_clip > 0:
        raise ValueError(f"Invalid kl_clip={kl_clip}: must be > 0 (or None to disable)")
    if split is not None and (planned or split < 1):
        raise ValueError(f"Invalid split={split}: pass an integer >= 1 and no plan "
                         "(a plan carries its own splits)")
    if graft not in GRAFTS:
        raise ValueError(f"Invalid graft={graft!r}: use 'sgd', 'adamw' or None")
    if not (len(betas) == 2 and all(0 <= b < 1 for b in betas)) or not eps >= 0:
        raise ValueError(f"Invalid betas={tuple(betas)} or eps={eps}: betas in [0, 1), eps >= 0")
    if nesterov and graft == "adamw":
        raise ValueError("Invalid nesterov=True with graft='adamw': AdamW's momentum is betas[0]")
    if max_skipped_steps is not None and (isinstance(max_skipped_steps, bool) or max_skipped_steps < 1):
        raise ValueError(f"Invalid max_skipped_steps={max_skipped_steps}: must be >= 1 (or None)")
