#!/usr/bin/env python3
"""Draws docs/bench/targets.svg: for every target of the benchmark issue, how much of it
Tally achieved (achieved / required; 1.0, the dashed line, means the target is met).

Usage: bench/scripts/targets-plot.py OUT.svg "LABEL=ACHIEVED/REQUIRED" ...
  throughput targets: ACHIEVED = Tally's figure, REQUIRED = the peer's figure times the
  factor asked for (or the absolute figure asked for); latency targets: pass the bound
  as ACHIEVED and the measured value as REQUIRED (lower is better).
No dependencies: writes the SVG by hand.
"""
import sys
from xml.sax.saxutils import escape

def main():
    out, items = sys.argv[1], []
    for arg in sys.argv[2:]:
        label, figures = arg.rsplit("=", 1)
        achieved, required = (float(x) for x in figures.split("/"))
        items.append((label, achieved / required, 1.0))
    width, bar_h, gap, left, right = 760, 26, 14, 230, 60
    height = 50 + len(items) * (bar_h + gap) + 30
    top = max(max(r, g) for _, r, g in items) * 1.1
    scale = (width - left - right) / top
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="13">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width/2}" y="22" text-anchor="middle" font-size="15">'
           'Share of each target achieved (1.0 = met), peers measured in the same run</text>']
    for i, (label, ratio, goal) in enumerate(items):
        y = 40 + i * (bar_h + gap)
        colour = "#2a9d3c" if ratio >= goal else "#d0632a"
        svg.append(f'<text x="{left-8}" y="{y+bar_h*0.7}" text-anchor="end">{escape(label)}</text>')
        svg.append(f'<rect x="{left}" y="{y}" width="{ratio*scale:.1f}" height="{bar_h}" fill="{colour}"/>')
        svg.append(f'<text x="{left+ratio*scale+6:.1f}" y="{y+bar_h*0.7}">{ratio:.2f}x</text>')
        gx = left + goal * scale
        svg.append(f'<line x1="{gx:.1f}" y1="{y-4}" x2="{gx:.1f}" y2="{y+bar_h+4}" '
                   'stroke="black" stroke-dasharray="4,3" stroke-width="2"/>')
    axis_y = 40 + len(items) * (bar_h + gap)
    svg.append(f'<line x1="{left}" y1="{axis_y}" x2="{width-right}" y2="{axis_y}" stroke="black"/>')
    step = 10 if top > 20 else (1 if top > 2 else 0.5)
    v = 0.0
    while v <= top:
        x = left + v * scale
        svg.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y+5}" stroke="black"/>')
        svg.append(f'<text x="{x:.1f}" y="{axis_y+18}" text-anchor="middle">{v:g}</text>')
        v += step
    svg.append('</svg>')
    with open(out, "w") as f:
        f.write("\n".join(svg) + "\n")

if __name__ == "__main__":
    main()
