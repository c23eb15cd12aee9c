"""Checks of user-given values (arguments, config fields) that name what is wrong in one line."""

from __future__ import annotations

import numbers

from arvision.errors import InputError


def check_number(
    value: object,
    name: str,
    whole: bool = False,
    *,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> None:
    """Refuse, naming it, a ``value`` that is not a real number (a whole one if ``whole``) or lies outside the
    bounds given (``>= minimum``, ``> above``, ``< below``); bools are refused too, as they pass for integers, and
    NaN whenever a bound is given."""
    kind = numbers.Integral if whole else numbers.Real
    bounds = [f"{sign} {bound}" for sign, bound in ((">=", minimum), (">", above), ("<", below)) if bound is not None]
    fits = (
        not isinstance(value, bool)
        and isinstance(value, kind)
        and (minimum is None or value >= minimum)
        and (above is None or value > above)
        and (below is None or value < below)
    )
    if not fits:
        within = " " + " and ".join(bounds) if bounds else ""
        raise InputError(f"{name} must be a {'whole ' if whole else ''}number{within}, got {value!r:.80}")


def check_flag(value: object, name: str) -> None:
    """Refuse, naming it, a ``value`` that is not a bool (a JSON "false" would be truthy)."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r:.80}")
