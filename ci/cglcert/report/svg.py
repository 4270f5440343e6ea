"""Tiny SVG chart helpers (our own): grouped bars and lines, as self-contained SVG strings.

Nothing fancy: fixed-size charts with a viewBox (they scale with the page), linear or log10
axes with round ticks, a legend, and a ``<title>`` on every bar and point carrying the exact
value (a tooltip in browsers, and text for screen readers). Values are plotted as given;
the helpers never smooth, interpolate or invent a point. Non-positive values on a log axis
are not drawn (and say so in their tooltip's place: the legend notes how many were left out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

__all__ = ["PALETTE", "bar_chart", "line_chart", "nice_ticks"]

#: Colour-blind-safe palette (Okabe & Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")

_W, _H = 640, 300
_M = {"left": 70, "right": 16, "top": 34, "bottom": 62}


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def _fmt(v: float) -> str:
    """Short axis/tooltip numbers: 1200 -> 1.2k, 3e6 -> 3M, 0.5 -> 0.5."""
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round linear ticks (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b += 1
    return [10.0 ** k for k in range(a, b + 1)]


class _Axis:
    """Maps data values to pixels along one axis."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool) -> None:
        self.log = log
        if log:
            self.ticks = _log_ticks(lo, hi)
        else:
            self.ticks = nice_ticks(min(lo, 0.0), hi)
        self.lo, self.hi = self.ticks[0], self.ticks[-1]
        self.p0, self.p1 = p0, p1

    def __call__(self, v: float) -> float:
        if self.log:
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / ((self.hi - self.lo) or 1)
        return self.p0 + f * (self.p1 - self.p0)


def _frame(title: str, desc: str, body: list[str], legend: Sequence[str], notes: Sequence[str],
           width: int, height: int) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} '
           f'{height + 22 * ((len(legend) + 3) // 4)}" role="img" font-family="sans-serif" '
           f'font-size="11">',
           f"<title>{_e(title)}</title>", f"<desc>{_e(desc)}</desc>",
           f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" '
           f'font-weight="bold">{_e(title)}</text>']
    out += body
    y = height + 4
    for i, name in enumerate(legend):
        col, row = i % 4, i // 4
        x = _M["left"] + col * 140
        yy = y + row * 20
        out.append(f'<rect x="{x}" y="{yy}" width="12" height="12" '
                   f'fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(f'<text x="{x + 16}" y="{yy + 10}">{_e(name)}</text>')
    for i, note in enumerate(notes):
        out.append(f'<text x="{width - _M["right"]}" y="{30 + 13 * i}" text-anchor="end" '
                   f'fill="#555">{_e(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _axes(x_labels: list[tuple[float, str]], ya: _Axis, x_title: str, y_title: str,
          width: int, height: int, y_fmt: Callable[[float], str]) -> list[str]:
    left, right = _M["left"], width - _M["right"]
    top, bottom = _M["top"], height - _M["bottom"]
    out = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>']
    for t in ya.ticks:
        y = ya(t)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(y_fmt(t))}</text>')
    for x, label in x_labels:
        out.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{_e(label)}</text>')
    out.append(f'<text x="{(left + right) / 2:.0f}" y="{bottom + 34}" '
               f'text-anchor="middle">{_e(x_title)}</text>')
    out.append(f'<text transform="translate(14 {(top + bottom) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{_e(y_title)}</text>')
    return out


def bar_chart(categories: Sequence[str], series: Sequence[dict[str, Any]], *, title: str,
              y_label: str, x_label: str = "", log_y: bool = False, desc: str = "",
              width: int = _W, height: int = _H,
              value_fmt: Callable[[float], str] = _fmt) -> str:
    """Grouped bars: ``series`` = [{"name", "values": [one per category, None = absent]}]."""
    values = [v for s in series for v in s["values"] if isinstance(v, (int, float))]
    drawable = [v for v in values if v > 0] if log_y else values
    left, right = _M["left"], width - _M["right"]
    top, bottom = _M["top"], height - _M["bottom"]
    notes = []
    if not drawable:
        return _frame(title, desc or title, [f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" '
                                             'text-anchor="middle">no data</text>'],
                      [], [], width, height)
    lo = min(drawable) if log_y else 0.0
    ya = _Axis(lo, max(drawable) or 1.0, bottom, top, log_y)
    n_cat, n_ser = len(categories), max(len(series), 1)
    slot = (right - left) / max(n_cat, 1)
    bar = slot * 0.8 / n_ser
    x_labels = [(left + slot * (i + 0.5), c) for i, c in enumerate(categories)]
    body = _axes(x_labels, ya, x_label, y_label + (" (log scale)" if log_y else ""),
                 width, height, value_fmt)
    skipped = 0
    for si, s in enumerate(series):
        colour = PALETTE[si % len(PALETTE)]
        for ci, v in enumerate(s["values"]):
            if not isinstance(v, (int, float)):
                continue
            if log_y and v <= 0:
                skipped += 1
                continue
            x = left + slot * ci + slot * 0.1 + bar * si
            y = ya(v)
            base = bottom if not log_y else ya(ya.lo)
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                        f'height="{max(base - y, 0.5):.1f}" fill="{colour}">'
                        f'<title>{_e(s["name"])}, {_e(categories[ci])}: {_e(v)}</title></rect>')
    if skipped:
        notes.append(f"{skipped} zero value(s) not drawn on the log scale")
    return _frame(title, desc or title, body, [s["name"] for s in series], notes, width, height)


def line_chart(series: Sequence[dict[str, Any]], *, title: str, x_label: str, y_label: str,
               log_x: bool = False, log_y: bool = False,
               x_categories: Sequence[str] | None = None, desc: str = "",
               width: int = _W, height: int = _H,
               x_fmt: Callable[[float], str] = _fmt,
               y_fmt: Callable[[float], str] = _fmt) -> str:
    """Lines with markers: ``series`` = [{"name", "points": [(x, y) or (x, y, tooltip)]}].

    With ``x_categories`` the x values are indices into it (evenly spaced, labelled by it).
    A point's tooltip defaults to "name: x -> y".
    """
    series = [{**s, "points": [tuple(p) for p in s["points"]]} for s in series]
    pts = [(p[0], p[1]) for s in series for p in s["points"]]
    if log_x:
        pts = [(x, y) for x, y in pts if x > 0]
    if log_y:
        pts = [(x, y) for x, y in pts if y > 0]
    left, right = _M["left"], width - _M["right"]
    top, bottom = _M["top"], height - _M["bottom"]
    if not pts:
        return _frame(title, desc or title, [f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" '
                                             'text-anchor="middle">no data</text>'],
                      [], [], width, height)
    ys = [y for _, y in pts]
    ya = _Axis(min(ys) if log_y else 0.0, max(ys) or 1.0, bottom, top, log_y)
    if x_categories is not None:
        n = max(len(x_categories), 1)
        slot = (right - left) / n

        def xa(v: float) -> float:
            return left + slot * (v + 0.5)
        step = max(1, math.ceil(n / 8))
        x_labels = [(xa(i), c) for i, c in enumerate(x_categories) if i % step == 0]
    else:
        xs = [x for x, _ in pts]
        axis = _Axis(min(xs) if log_x else min(0.0, min(xs)), max(xs) or 1.0, left, right, log_x)
        xa = axis
        x_labels = [(axis(t), x_fmt(t)) for t in axis.ticks]
    body = _axes(x_labels, ya, x_label + (" (log scale)" if log_x else ""),
                 y_label + (" (log scale)" if log_y else ""), width, height, y_fmt)
    dropped = 0
    for si, s in enumerate(series):
        colour = PALETTE[si % len(PALETTE)]
        good = [p for p in s["points"]
                if not (log_x and p[0] <= 0) and not (log_y and p[1] <= 0)]
        dropped += len(s["points"]) - len(good)
        if len(good) > 1:
            path = " ".join(f"{xa(p[0]):.1f},{ya(p[1]):.1f}" for p in good)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                        f'stroke-width="2"/>')
        for p in good:
            x, y = p[0], p[1]
            if len(p) > 2:
                tip = str(p[2])
            else:
                xl = x_categories[int(x)] if x_categories is not None else x
                tip = f"{s['name']}: {xl} -> {y}"
            body.append(f'<circle cx="{xa(x):.1f}" cy="{ya(y):.1f}" r="3" fill="{colour}">'
                        f'<title>{_e(tip)}</title></circle>')
    notes = [f"{dropped} zero value(s) not drawn on the log scale"] if dropped else []
    return _frame(title, desc or title, body, [s["name"] for s in series], notes, width, height)
