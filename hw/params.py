"""Constructor-argument validation shared by the gateware components."""

__all__ = ["check_int"]


def check_int(name, value, lo, hi, owner=None):
    """Return ``value`` if it is an integer (not a bool) in ``[lo, hi]``, else raise ``ValueError``.

    The message names the argument (prefixed with ``owner``, if given) and the allowed range.
    """
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value
