"""The savings plot: accuracy against counted cost and against measured time, and the roofline's
predicted speedup against the measured one, one marker per variant, labelled without overlaps."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pwconv.costs import human

_GAP = 4  # pixels kept clear around each label, so two labels never read as one
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "d")
# Label offsets (points) tried in turn around a marker, nearest first.
_OFFSETS = [(dx * r, dy * r) for r in (6, 14, 24, 36, 50, 66, 84, 104)
            for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]


def plot_savings(rows: Sequence[Mapping[str, Any]], path: str, baseline: str) -> None:
  """Writes a three-panel PNG of the savings rows (:func:`experiments.report.savings_rows`).

  (a) test accuracy against MACs per example; (b) test accuracy against the measured train step;
  (c) predicted against measured inference speedup, with the line where they agree. Accuracy error
  bars are ± its std over seeds, time error bars its interquartile range over timed rounds. Each
  variant has one colour and marker in every panel, named in the legend and by a label beside it
  (placed where it overlaps no other label or marker); the baseline is a black star.
  """
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  from matplotlib import ticker

  fig, grid = plt.subplots(2, 2, figsize=(12, 9.5))
  panels, legend_ax = (grid[0, 0], grid[0, 1], grid[1, 0]), grid[1, 1]
  colours = plt.get_cmap("tab20" if len(rows) > 10 else "tab10")
  styles = {}
  for i, row, marker in zip(itertools.count(), rows, itertools.cycle(_MARKERS)):
    base = row["variant"] == baseline
    styles[row["variant"]] = dict(marker="*" if base else marker, color="black" if base else
                                  colours(i % colours.N), markersize=14 if base else 8)
  points = []
  for ax, (x_key, x_spread, title, x_label) in zip(panels, (
      ("macs", None, "(a) accuracy against counted cost", "MACs per example (paper convention)"),
      ("train_step_ms", "train_step_ms_iqr", "(b) accuracy against measured time",
       "measured train step (ms, this device)"))):
    points.append([(row[x_key], 100 * row["test_accuracy"]) for row in rows])
    for row, (x, y) in zip(rows, points[-1]):
      _point(ax, x, y, _spread(row, x_spread), 100 * (row.get("test_accuracy_std") or 0),
             styles[row["variant"]])
    ax.set(title=title, xlabel=x_label, ylabel="test accuracy (%)", xscale="log")
    ax.margins(0.08)  # room for the markers at the ends and their labels
  panels[0].xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: human(int(round(v)))))
  panels[1].xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax = panels[2]
  points.append([(row["inference_speedup"], row["predicted_speedup"]) for row in rows])
  for row, (x, y) in zip(rows, points[-1]):
    _point(ax, x, y, _spread(row, "inference_speedup_iqr"), 0, styles[row["variant"]])
  ends = [v for row in rows for v in (row["inference_speedup"], row["predicted_speedup"])]
  low, high = min(ends + [1.0]) / 1.5, max(ends + [1.0]) * 1.5
  ax.plot([low, high], [low, high], "--", color="grey", lw=1, label="predicted = measured")
  ax.set(title="(c) roofline prediction against measurement", xscale="log", yscale="log",
         xlim=(low, high), ylim=(low, high), xlabel="measured inference speedup (x, baseline = 1)",
         ylabel="predicted inference speedup (x)")
  for axis in (ax.xaxis, ax.yaxis):
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())
  for ax in panels:
    ax.grid(True, which="both", alpha=0.25)
    # Labelled ticks at 1, 2 and 5 of each decade: a run's variants often span less than one.
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  panels[2].yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
  _legend(legend_ax, rows, styles, baseline)
  fig.tight_layout()
  names = [row["variant"] for row in rows]
  for ax, xy in zip(panels, points):
    _label_points(fig, ax, names, xy, styles)
  fig.savefig(path, dpi=130)
  plt.close(fig)


def _spread(row: Mapping[str, Any], key: str | None) -> list[float] | None:
  return row.get(key) if key else None


def _point(ax, x: float, y: float, x_quartiles: list[float] | None, y_std: float,
           style: Mapping[str, Any]) -> None:
  """One marker, with horizontal quartile bars and vertical ± std bars where there are any."""
  xerr = None if x_quartiles is None else [[x - x_quartiles[0]], [x_quartiles[1] - x]]
  ax.errorbar([x], [y], xerr=xerr, yerr=[y_std] if y_std else None, linestyle="none",
              capsize=2, elinewidth=0.8, markeredgecolor="black", markeredgewidth=0.5, **style)


def _legend(ax, rows: Sequence[Mapping[str, Any]], styles: Mapping[str, Any],
            baseline: str) -> None:
  """The legend panel: every variant's marker, the baseline explained, the error bars explained."""
  from matplotlib.lines import Line2D
  handles = [Line2D([], [], linestyle="none", markeredgecolor="black", markeredgewidth=0.5,
                    **styles[row["variant"]],
                    label=row["variant"] + (" (baseline: ratios are against it)"
                                            if row["variant"] == baseline else ""))
             for row in rows]
  ax.axis("off")
  n = max(row.get("n", 1) for row in rows)
  ax.legend(handles=handles, loc="upper left", ncol=2 if len(rows) > 9 else 1, frameon=False,
            title="variants", alignment="left", fontsize=9)
  ax.text(0, 0, "error bars: test accuracy ± its std over "
          + (f"n={n} seeds" if n > 1 else "seeds (one seed: none)")
          + ";\ntimes and speedups: interquartile range over timed rounds.\n"
          "(c): points above the dashed line were predicted faster than measured.",
          transform=ax.transAxes, fontsize=9, va="bottom")


def _label_points(fig, ax, names: Sequence[str], points: Sequence[tuple[float, float]],
                  styles: Mapping[str, Any]) -> list[tuple[float, float, float, float]]:
  """Names each marker of ``ax`` at the first offset where its text stays inside the axes, covers
  no marker and keeps :data:`_GAP` pixels from every label placed. A label right beside its marker
  must be nearer to it than to any other marker; one further out gets a thin leader line in the
  marker's colour. Returns the labels' boxes (pixels)."""
  from matplotlib.text import Text
  renderer = fig.canvas.get_renderer()
  centres = [ax.transData.transform(xy) for xy in points]
  markers = []
  for name, (px, py) in zip(names, centres):
    half = styles[name]["markersize"] * fig.dpi / 72 / 2
    markers.append((px - half, py - half, px + half, py + half))
  placed: list[tuple[float, float, float, float]] = []
  frame = ax.get_window_extent(renderer)
  for i, (name, (x, y)) in enumerate(zip(names, points)):
    best = None  # (conflicts, offset): with no free place, the one of fewest conflicts
    for offset in _OFFSETS:
      text = _label(ax, name, (x, y), offset, styles[name]["color"])
      text.update_positions(renderer)
      b = Text.get_window_extent(text, renderer)  # the text alone, not its leader line
      text.remove()
      box = (b.x0, b.y0, b.x1, b.y1)
      padded = (b.x0 - _GAP, b.y0 - _GAP, b.x1 + _GAP, b.y1 + _GAP)
      beside = max(map(abs, offset)) <= _OFFSETS[0][0]
      conflicts = (sum(map(functools.partial(_overlap, box), markers))
                   + sum(map(functools.partial(_overlap, padded), placed))
                   + (not (b.x0 >= frame.x0 and b.x1 <= frame.x1 and b.y0 >= frame.y0
                           and b.y1 <= frame.y1))
                   + (beside and min(_distance(box, c) for c in centres)
                      < _distance(box, centres[i])))
      if best is None or conflicts < best[0]:
        best = (conflicts, offset, box)
      if not conflicts:
        break
    _label(ax, name, (x, y), best[1], styles[name]["color"])
    placed.append(best[2])
  return placed


def _label(ax, name: str, xy: tuple[float, float], offset: tuple[int, int], colour: Any):
  dx, dy = offset
  leader = (dict(arrowstyle="-", lw=0.6, color=colour, shrinkA=0, shrinkB=4)
            if max(abs(dx), abs(dy)) > _OFFSETS[0][0] else None)
  return ax.annotate(name, xy, xytext=offset, textcoords="offset points", fontsize=8,
                     ha="left" if dx > 0 else "right" if dx < 0 else "center",
                     va="bottom" if dy > 0 else "top" if dy < 0 else "center", arrowprops=leader)


def _distance(box: tuple[float, ...], point: Any) -> float:
  """Pixels from ``point`` to the nearest point of ``box``."""
  x, y = point
  return math.hypot(max(box[0] - x, 0, x - box[2]), max(box[1] - y, 0, y - box[3]))


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
