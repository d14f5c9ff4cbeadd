"""Byte counts as people read them (1.5 GiB), shared by the console and the messages of the hub."""

from __future__ import annotations


def size(n: int | float | None) -> str:
    if n is None:
        return "?"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return str(n)


def gigabytes(n: int) -> str:
    """Decimal gigabytes, the unit download pages use (the Hub lists V4-Flash as about 160 GB)."""
    return f"{n / 1e9:,.0f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"
