# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plots of bench.py as hand-written SVG (no plotting library needed): scaling and data path.

Two panels over the excluded-CIDR counts (evenly spaced, so 0, 100, 1,000, 10,000 read as a
log scale with 0 in front): the task's net cost in seconds, and that cost divided by the cost
with no CIDRs, with the target (2x) as a dashed line.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

SERIES = (  # key in the scaling table, label, colour, dashed
    ("nft", "apply", "nft, first apply", "#1f77b4", False),
    ("nft", "rerun", "nft, no-op re-run", "#1f77b4", True),
    ("legacy", "apply", "legacy, first apply", "#d62728", False),
    ("legacy", "rerun", "legacy, no-op re-run", "#d62728", True),
    ("native", "apply", "native nftables, first apply", "#ff7f0e", False),
    ("native", "rerun", "native nftables, no-op re-run", "#ff7f0e", True),
)
STRING_COLOUR = "#9467bd"  # nft apply, the CIDRs as one comma-separated string
WIDTH, HEIGHT = 900, 400
LEGEND_COLUMNS, LEGEND_STEP = 4, 215  # legend entries per row, and their spacing
PANEL_W, PANEL_H = 340, 250
TOP, LEFT = 50, 70


def _nice_max(value):
    for step in (0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        if value <= step * 5:
            return step * 5, step
    return value, value / 5


def _panel(out, x0, title, sizes, values, unit, target=None, extra=None):
    """values: {series index: [y per size]}; extra: a lone value at the largest size (the string form)."""
    top = max([max(v) for v in values.values()] + ([extra] if extra is not None else []))
    if target is not None:
        top = max(top, target * 1.1)
    ymax, step = _nice_max(top * 1.05)
    n = len(sizes)

    def px(i):
        return x0 + (i + 0.5) * PANEL_W / n

    def py(y):
        return TOP + PANEL_H - max(0.0, y) / ymax * PANEL_H

    out.append('<text x="%d" y="%d" font-size="14" font-weight="bold">%s</text>' % (x0, TOP - 14, escape(title)))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (x0, TOP, PANEL_W, PANEL_H))
    tick = 0.0
    while tick <= ymax + 1e-9:
        y = py(tick)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (x0, y, x0 + PANEL_W, y))
        out.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%g</text>' % (x0 - 6, y + 4, tick))
        tick += step
    out.append('<text x="%d" y="%d" font-size="12" text-anchor="middle" transform="rotate(-90 %d %d)">%s</text>'
               % (x0 - 45, TOP + PANEL_H // 2, x0 - 45, TOP + PANEL_H // 2, escape(unit)))
    for i, size in enumerate(sizes):
        out.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>'
                   % (px(i), TOP + PANEL_H + 16, "{:,}".format(size)))
    out.append('<text x="%d" y="%d" font-size="12" text-anchor="middle">excluded CIDRs</text>'
               % (x0 + PANEL_W // 2, TOP + PANEL_H + 34))
    if target is not None:
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#2ca02c" stroke-width="1.5" '
                   'stroke-dasharray="6,4"/>' % (x0, py(target), x0 + PANEL_W, py(target)))
        out.append('<text x="%d" y="%.1f" font-size="11" fill="#2ca02c" text-anchor="end">target %gx</text>'
                   % (x0 + PANEL_W - 4, py(target) - 4, target))
    for index, ys in values.items():
        colour, dashed = SERIES[index][3:]
        points = " ".join("%.1f,%.1f" % (px(i), py(y)) for i, y in enumerate(ys))
        out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>'
                   % (points, colour, ' stroke-dasharray="5,3"' if dashed else ""))
        for i, y in enumerate(ys):
            out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (px(i), py(y), colour))
    if extra is not None:
        out.append('<circle cx="%.1f" cy="%.1f" r="5" fill="none" stroke="%s" stroke-width="2"/>'
                   % (px(n - 1), py(extra), STRING_COLOUR))


def _legend_spot(entry):
    """Where legend entry number ``entry`` goes: rows of LEGEND_COLUMNS under the panels."""
    return 20 + (entry % LEGEND_COLUMNS) * LEGEND_STEP, HEIGHT - 44 + (entry // LEGEND_COLUMNS) * 22


def write_svg(path, sizes, table, backends=("nft", "legacy", "native"),
              measure="Task cost, net of ansible-playbook start-up"):
    """``table["nft 1000"]["apply"]`` etc. as produced by bench.scaling_table; ``measure`` names the baseline."""
    shown = [i for i, s in enumerate(SERIES) if s[0] in backends]
    seconds = {i: [table["%s %d" % (SERIES[i][0], n)][SERIES[i][1]] for n in sizes] for i in shown}
    ratios = {i: [table["%s %d" % (SERIES[i][0], n)][SERIES[i][1] + " ratio"] for n in sizes] for i in shown}
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif">' % (WIDTH, HEIGHT, WIDTH, HEIGHT),
           '<rect width="100%" height="100%" fill="white"/>']
    string = table.get("nft string %d" % sizes[-1])
    _panel(out, LEFT, measure, sizes, seconds, "seconds, net (median)",
           extra=string["apply"] if string else None)
    _panel(out, LEFT + PANEL_W + 110, "Cost relative to 0 CIDRs", sizes, ratios, "x cost with 0 CIDRs", target=2,
           extra=string["apply ratio"] if string else None)
    for entry, i in enumerate(shown):
        label, colour, dashed = SERIES[i][2:]
        x, legend_y = _legend_spot(entry)
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>'
                   % (x, legend_y, x + 26, legend_y, colour, ' stroke-dasharray="5,3"' if dashed else ""))
        out.append('<text x="%d" y="%d" font-size="12">%s</text>' % (x + 31, legend_y + 4, escape(label)))
    if string:
        x, legend_y = _legend_spot(len(shown))
        out.append('<circle cx="%d" cy="%d" r="5" fill="none" stroke="%s" stroke-width="2"/>'
                   % (x + 13, legend_y, STRING_COLOUR))
        out.append('<text x="%d" y="%d" font-size="12">nft, apply, one string</text>' % (x + 31, legend_y + 4))
    out.append("</svg>")
    with open(path, "w") as handle:
        handle.write("\n".join(out) + "\n")


# --- the data-path figure (bench.py's datapath part) -------------------------------------------

MODE_COLOURS = {"nft": "#1f77b4", "legacy": "#d62728", "native": "#ff7f0e"}
MODE_LABELS = {"nft": "iptables-nft", "legacy": "legacy", "native": "native nftables"}
DP_WIDTH, DP_HEIGHT, DP_PANEL_W = 1200, 420, 300


def _series_panel(out, x0, title, sizes, series, unit, target=None, ymin=0.0, ymax=None):
    """One panel over ``sizes`` (evenly spaced); ``series``: [(colour, dashed, [y per size or None])], or with a
    fourth item, [(low, high) per size or None]: an interval drawn as a bar at each point."""
    values = [y for item in series for y in item[2] if y is not None]
    top = max(values + ([target * 1.02] if target else []))
    if ymax is None:
        ymax, step = _nice_max((top - ymin) * 1.05)
        ymax += ymin
    else:
        step = (ymax - ymin) / 5
    n = len(sizes)

    def px(i):
        return x0 + (i + 0.5) * DP_PANEL_W / n

    def py(y):
        return TOP + PANEL_H - (min(max(y, ymin), ymax) - ymin) / (ymax - ymin) * PANEL_H

    out.append('<text x="%d" y="%d" font-size="14" font-weight="bold">%s</text>' % (x0, TOP - 14, escape(title)))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>'
               % (x0, TOP, DP_PANEL_W, PANEL_H))
    tick = ymin
    while tick <= ymax + 1e-9:
        y = py(tick)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (x0, y, x0 + DP_PANEL_W, y))
        out.append('<text x="%d" y="%.1f" font-size="11" text-anchor="end">%g</text>'
                   % (x0 - 6, y + 4, round(tick, 6)))
        tick += step
    out.append('<text x="%d" y="%d" font-size="12" text-anchor="middle" transform="rotate(-90 %d %d)">%s</text>'
               % (x0 - 45, TOP + PANEL_H // 2, x0 - 45, TOP + PANEL_H // 2, escape(unit)))
    for i, size in enumerate(sizes):
        out.append('<text x="%.1f" y="%d" font-size="11" text-anchor="middle">%s</text>'
                   % (px(i), TOP + PANEL_H + 16, "{:,}".format(size)))
    out.append('<text x="%d" y="%d" font-size="12" text-anchor="middle">excluded CIDRs</text>'
               % (x0 + DP_PANEL_W // 2, TOP + PANEL_H + 34))
    if target is not None:
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#2ca02c" stroke-width="1.5" '
                   'stroke-dasharray="6,4"/>' % (x0, py(target), x0 + DP_PANEL_W, py(target)))
        out.append('<text x="%d" y="%.1f" font-size="11" fill="#2ca02c" text-anchor="end">target %gx</text>'
                   % (x0 + DP_PANEL_W - 4, py(target) - 4, target))
    for item in series:
        colour, dashed, ys = item[:3]
        for i, interval in enumerate(item[3] if len(item) > 3 else ()):
            if interval:
                x = px(i) + (series.index(item) - (len(series) - 1) / 2.0) * 3  # side by side, not on top
                out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1" opacity="0.7"/>'
                           % (x, py(interval[0]), x, py(interval[1]), colour))
        points = [(px(i), py(y)) for i, y in enumerate(ys) if y is not None]
        out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>'
                   % (" ".join("%.1f,%.1f" % p for p in points), colour, ' stroke-dasharray="5,3"' if dashed else ""))
        for x, y in points:
            out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, colour))


def write_datapath_svg(path, data, target=1.05):
    """Connect latency per mode and ``cidr_sets``, its ratio to 0 CIDRs, and that ratio zoomed for the sets.

    ``data`` is bench.py's ``report["datapath"]`` (``datapath.part_datapath``).
    """
    if "cells" not in data:
        return
    sizes, cells = data["sizes"], data["cells"]
    lines = []  # (mode, sets)
    for mode in data["modes"]:
        for sets in (False, True):
            if "%s %s 0" % (mode, "sets" if sets else "rules") in cells:
                lines.append((mode, sets))

    def column(mode, sets, field):
        return [cells.get("%s %s %d" % (mode, "sets" if sets else "rules", n), {}).get(field) for n in sizes]

    width = DP_WIDTH if any(sets for dummy, sets in lines) else DP_WIDTH - DP_PANEL_W - 100
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif">' % (width, DP_HEIGHT, width, DP_HEIGHT),
           '<rect width="100%" height="100%" fill="white"/>']
    latency = [(MODE_COLOURS[m], not s, column(m, s, "median_us")) for m, s in lines]
    # The paired ratio (median of the per-round ratios): the figure the verdicts use; bars: its 95 % interval.
    ratios = [(MODE_COLOURS[m], not s, column(m, s, "paired_ratio"), column(m, s, "paired_ratio_ci95"))
              for m, s in lines]
    _series_panel(out, LEFT, "Connect latency, median", sizes, latency, "microseconds per connect")
    _series_panel(out, LEFT + DP_PANEL_W + 100, "Relative to 0 CIDRs (paired)", sizes, [r[:3] for r in ratios],
                  "x latency with 0 CIDRs", target=target)
    zoom = [series for series, (m, s) in zip(ratios, lines) if s]
    if zoom:
        values = [y for item in zoom for pair in item[3] if pair for y in pair]
        low = min(0.9, min(values) - 0.02)
        high = max(1.15, max(values) + 0.02)
        _series_panel(out, LEFT + 2 * (DP_PANEL_W + 100), "cidr_sets: true, zoomed, 95 % bars", sizes, zoom,
                      "x latency with 0 CIDRs", target=target, ymin=round(low, 2), ymax=round(high, 2))
    for entry, (mode, sets) in enumerate(lines):
        x, legend_y = 20 + (entry % 3) * 260, DP_HEIGHT - 50 + (entry // 3) * 22
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>'
                   % (x, legend_y, x + 26, legend_y, MODE_COLOURS[mode], "" if sets else ' stroke-dasharray="5,3"'))
        label = "%s, %s" % (MODE_LABELS[mode], "cidr_sets: true" if sets else "one rule per CIDR")
        out.append('<text x="%d" y="%d" font-size="12">%s</text>' % (x + 31, legend_y + 4, escape(label)))
    out.append("</svg>")
    with open(path, "w") as handle:
        handle.write("\n".join(out) + "\n")
