"""``sweep --report FILE.html``: one self-contained, offline HTML page of a sweep.

No script, no font, no network: inline CSS and inline SVG charts, so the file can be mailed,
archived, or opened on a server without internet. Everything that came from the command line or
the file system is escaped. Contents: what was swept, the plain-words verdicts, the ranking, heat
maps of period × k, equity curves of the best sets (whole file and out-of-sample), and every set's
in-sample against out-of-sample result.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
from collections.abc import Sequence
from typing import Any

from sweep import set_label

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563",
           "#65a30d")

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI","PingFang SC","Microsoft YaHei",sans-serif;margin:0;color:#111;
background:#f7f7f8}main{max-width:1180px;margin:0 auto;padding:16px}h1{font-size:20px;margin:8px 0}
h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#444}.meta span{display:inline-block;margin-right:18px}
.verdict{background:#fff;border-left:4px solid #2563eb;padding:8px 12px;margin:12px 0}
.verdict p{margin:4px 0}.warn{color:#b91c1c;font-weight:600}
table{border-collapse:collapse;background:#fff;width:100%;font-size:13px}
th,td{padding:4px 6px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f0f0f2;position:sticky;top:0}td.l,th.l{text-align:left}
.pos{color:#15803d}.neg{color:#b91c1c}.scroll{overflow-x:auto}
.charts{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;padding:8px;border:1px solid #e5e5e5}
svg{max-width:100%;height:auto}svg text{font:11px sans-serif;fill:#333}.legend span{margin-right:12px;
white-space:nowrap}.legend i{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:4px}
footer{color:#555;font-size:12px;margin:24px 0}code{background:#eee;padding:1px 4px}
.cap{font-size:12px;max-width:260px;margin-bottom:2px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _date(ms: int | None) -> str:
    if ms is None:
        return "—"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _money(value: float | None) -> str:
    if value is None:
        return "—"
    cls = "pos" if value > 0 else "neg" if value < 0 else ""
    return f'<span class="{cls}">{value:+,.2f}</span>'


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "—" if value is None else format(value, fmt)


# ---- charts -------------------------------------------------------------------------------------

def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def line_chart(lines: Sequence[tuple[str, str, Sequence[int], Sequence[float]]], width: int = 1100,
               height: int = 320, marker_ms: int | None = None, marker_label: str = "") -> str:
    """An SVG line chart of (label, colour, times ms, values) with a zero line and date ticks."""
    lines = [ln for ln in lines if len(ln[2])]
    if not lines:
        return '<p class="meta">（无数据 / no data）</p>'
    left, right, top, bottom = 70, 10, 10, 28
    t0 = min(min(ln[2]) for ln in lines)
    t1 = max(max(ln[2]) for ln in lines)
    lo = min(0.0, min(min(ln[3]) for ln in lines))
    hi = max(0.0, max(max(ln[3]) for ln in lines))
    if hi == lo:
        hi = lo + 1.0
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    span = max(t1 - t0, 1)

    def x(t: float) -> float:
        return left + (t - t0) / span * (width - left - right)

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for v in _nice_ticks(lo, hi):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999"/>')
    for t in _month_ticks(t0, t1):
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{height - bottom}" stroke="#f0f0f0"/>'
                   f'<text x="{x(t):.1f}" y="{height - 10}" text-anchor="middle">{_e(_date(t)[:7])}</text>')
    if marker_ms is not None and t0 <= marker_ms <= t1:
        out.append(f'<line x1="{x(marker_ms):.1f}" x2="{x(marker_ms):.1f}" y1="{top}" y2="{height - bottom}" '
                   f'stroke="#111" stroke-dasharray="4 3"/><text x="{x(marker_ms) + 4:.1f}" y="{top + 12}">'
                   f'{_e(marker_label)}</text>')
    for label, colour, times, values in reversed(lines):
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, values, strict=True))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}">'
                   f'<title>{_e(label)}</title></polyline>')
    out.append("</svg>")
    legend = "".join(f'<span><i style="background:{c}"></i>{_e(label)}</span>' for label, c, _t, _v in lines)
    return "".join(out) + f'<div class="legend">{legend}</div>'


def _month_ticks(t0: int, t1: int) -> list[int]:
    start = dt.datetime.fromtimestamp(t0 / 1000, dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    months = max(1, round((t1 - t0) / (30.4 * 86_400_000)))
    every = max(1, math.ceil(months / 12))
    ticks, d = [], start
    while True:
        month = d.month - 1 + every
        d = d.replace(year=d.year + month // 12, month=month % 12 + 1)
        ms = int(d.timestamp() * 1000)
        if ms > t1:
            return ticks
        ticks.append(ms)


def heat_map(rows: Sequence[int], cols: Sequence[float], values: dict[tuple[int, float], float | None],
             title: str, cell: int = 44) -> str:
    """An SVG heat map: rows = periods, columns = k; red losses, green profits (scaled to the largest)."""
    left, top = 56, 18
    width = left + cell * len(cols) + 10
    height = top + 22 * len(rows) + 10
    scale = max([abs(v) for v in values.values() if v is not None] + [1e-9])
    out = [f'<div class="cap">{_e(title)}</div>',
           f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
           f'<text x="{left - 6}" y="{top - 6}" text-anchor="end">period\\k</text>']
    for j, k in enumerate(cols):
        out.append(f'<text x="{left + cell * j + cell / 2:.1f}" y="{top - 6}" text-anchor="middle">{k:g}</text>')
    for i, period in enumerate(rows):
        yy = top + 22 * i
        out.append(f'<text x="{left - 6}" y="{yy + 15}" text-anchor="end">{period}</text>')
        for j, k in enumerate(cols):
            v = values.get((period, k))
            if v is None:
                colour, text = "#eee", ""
            else:
                a = min(abs(v) / scale, 1.0)
                base = (22, 163, 74) if v > 0 else (220, 38, 38)
                r, g, b = (round(255 - (255 - c) * (0.15 + 0.85 * a)) for c in base)
                colour, text = f"rgb({r},{g},{b})", f"{v:,.0f}"
            ink = "#fff" if v is not None and abs(v) / scale > 0.55 else "#222"
            out.append(f'<rect x="{left + cell * j}" y="{yy}" width="{cell - 2}" height="20" fill="{colour}">'
                       f'<title>period {period}, k {k:g}: {_e(text) or "—"} USDT</title></rect>'
                       f'<text x="{left + cell * j + cell / 2 - 1:.1f}" y="{yy + 14}" text-anchor="middle" '
                       f'style="font-size:10px;fill:{ink}">{_e(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def scatter(points: Sequence[tuple[float, float, str, bool]], width: int = 520, height: int = 380) -> str:
    """In-sample (x) against out-of-sample (y) net PnL of every set; the best in-sample set in red."""
    if not points:
        return ""
    left, right, top, bottom = 70, 14, 14, 40
    xs = [p[0] for p in points] + [0.0]
    ys = [p[1] for p in points] + [0.0]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    x_pad, y_pad = (x_hi - x_lo) * 0.05 or 1.0, (y_hi - y_lo) * 0.05 or 1.0
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad

    def x(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (width - left - right)

    def y(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * (height - top - bottom)

    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
           f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top}" y2="{height - bottom}" stroke="#999"/>',
           f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#999"/>',
           f'<text x="{(left + width) / 2:.0f}" y="{height - 6}" text-anchor="middle">样本内净盈亏 in-sample net '
           f'PnL (USDT)</text>',
           f'<text x="12" y="{(top + height - bottom) / 2:.0f}" transform="rotate(-90 12 '
           f'{(top + height - bottom) / 2:.0f})" text-anchor="middle">样本外 out-of-sample (USDT)</text>']
    for v in _nice_ticks(x_lo, x_hi, 4):
        out.append(f'<text x="{x(v):.1f}" y="{height - bottom + 14}" text-anchor="middle">{v:,.0f}</text>')
    for v in _nice_ticks(y_lo, y_hi, 4):
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    for px, py, label, best in sorted(points, key=lambda p: p[3]):
        colour, r = ("#dc2626", 5) if best else ("#2563eb", 3)
        out.append(f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="{r}" fill="{colour}" fill-opacity="0.7">'
                   f'<title>{_e(label)}: IS {px:+,.2f} / OOS {py:+,.2f}</title></circle>')
    out.append("</svg>")
    return "".join(out)


# ---- the page -----------------------------------------------------------------------------------

def _slices(ordered: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Results grouped by everything but period and k (one heat map each), best slice first."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in ordered:
        s = r["summary"]
        key = (s["interval"], s["evaluate_on"], s["breakout_buffer_pct"], s["stop_cooldown_candles"], s["slippage_pct"])
        groups.setdefault(key, []).append(r)
    return groups


def _slice_title(key: tuple[Any, ...]) -> str:
    interval, evaluate_on, buffer, cooldown, slippage = key
    text = f"{interval}"
    if evaluate_on != "tick":
        text += " · 收盘判断 close"
    if buffer:
        text += f" · buffer {buffer:g}%"
    if cooldown:
        text += f" · cooldown {cooldown}"
    if slippage:
        text += f" · slippage {slippage:g}%"
    return text


def render(meta: dict[str, Any], ordered: list[dict[str, Any]], top: int) -> str:
    """The report as one HTML string."""
    walk = meta.get("split_time_ms") is not None
    parts: list[str] = ["<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">",
                        '<meta name="viewport" content="width=device-width,initial-scale=1">',
                        f"<title>bollmin 策略实验室 / strategy lab — {_e(meta['source_file'])}</title>",
                        f"<style>{CSS}</style></head><body><main>",
                        "<h1>bollmin 策略实验室报告 / Strategy lab report</h1>", '<div class="meta">']
    info = [
        ("数据 file", meta["source_file"]), ("交易对 symbol", meta["symbol"]),
        ("时间 span (UTC)", f"{_date(meta['first_open_time_ms'])} → {_date(meta['last_open_time_ms'])}"),
        ("参数组 sets", f"{meta['sets']:,}"), ("用时 time", f"{meta['elapsed_s']:.1f} s × {meta['jobs']} 进程 jobs"),
        ("每笔 per position", f"{meta['trade_amount_usdt']:g} USDT"), ("手续费 fee", f"{meta['fee_rate'] * 100:g}%"),
        ("资金费 funding", meta["funding_file"] or "未计 not charged"),
        ("排名依据 ranked by", meta["rank_by"] + ("（样本内 in-sample）" if walk else "")),
    ]
    if walk:
        info.append(("样本外起点 out-of-sample from", f"{_date(meta['split_time_ms'])} "
                                                    f"(train fraction {meta['train_fraction']:g})"))
    parts += [f"<span><b>{_e(k)}</b>: {_e(v)}</span>" for k, v in info]
    parts.append('</div><div class="verdict">')
    for line in meta["verdicts"]:
        cls = ' class="warn"' if line.startswith("⚠") else ""
        parts.append(f"<p{cls}>{_e(line)}</p>")
    parts.append("</div>")

    # Ranking.
    parts.append(f"<h2>排名 / Ranking（前 {min(50, len(ordered))} / top {min(50, len(ordered))}）</h2>"
                 '<div class="scroll"><table><tr><th>#</th><th class="l">参数 parameters</th><th>净盈亏 net</th>'
                 "<th>交易 trades</th><th>胜率 win</th><th>最大回撤 max DD</th><th>盈亏比 PF</th>"
                 "<th>夏普 Sharpe</th><th>持仓 exposure</th>")
    if walk:
        parts.append("<th>样本内 IS net</th><th>样本外 OOS net</th><th>OOS trades</th><th>OOS max DD</th>")
    parts.append("</tr>")
    for r in ordered[:50]:
        s = r["summary"]
        parts.append(f"<tr><td>{r['rank']}</td><td class=\"l\">{_e(set_label(s))}</td><td>{_money(s['net_pnl_usdt'])}"
                     f"</td><td>{s['trades']:,}</td><td>{s['win_rate'] * 100:.1f}%</td>"
                     f"<td>{s['max_drawdown_usdt']:,.2f}</td><td>{_num(s['profit_factor'])}</td>"
                     f"<td>{_num(s['sharpe_daily'])}</td><td>{s['exposure'] * 100:.0f}%</td>")
        if walk:
            i, o = r["in_sample"], r["out_of_sample"]
            parts.append(f"<td>{_money(i['net_pnl_usdt'])}</td><td>{_money(o['net_pnl_usdt'])}</td>"
                         f"<td>{o['trades']:,}</td><td>{o['max_drawdown_usdt']:,.2f}</td>")
        parts.append("</tr>")
    parts.append("</table></div>")

    # Heat maps.
    slices = _slices(ordered)
    best_first = sorted(slices.items(), key=lambda kv: kv[1][0]["rank"])[:6]
    parts.append("<h2>热力图 period × k / Heat maps（净盈亏 USDT / net PnL）</h2><div class=\"charts\">")
    for key, members in best_first:
        periods = sorted({m["summary"]["boll_period"] for m in members})
        ks = sorted({m["summary"]["boll_k"] for m in members})
        whole = {(m["summary"]["boll_period"], m["summary"]["boll_k"]): m["summary"]["net_pnl_usdt"]
                 for m in members}
        title = _slice_title(key)
        parts.append(f'<div class="card">{heat_map(periods, ks, whole, title + " · 全部 whole file")}</div>')
        if walk:
            oos = {(m["summary"]["boll_period"], m["summary"]["boll_k"]): m["out_of_sample"]["net_pnl_usdt"]
                   for m in members}
            chart = heat_map(periods, ks, oos, title + " · 样本外 out-of-sample")
            parts.append(f'<div class="card">{chart}</div>')
    parts.append("</div>")

    # Equity curves.
    best = ordered[:min(top, len(PALETTE))]
    lines = [(f"#{r['rank']} {set_label(r['summary'])}", PALETTE[n % len(PALETTE)], meta["day_end_ms"],
              [float(v) for v in r["daily_equity"]]) for n, r in enumerate(best)]
    parts.append(f"<h2>资金曲线 / Equity curves（前 {len(best)} 名，净盈亏 + 浮动盈亏，每日 UTC 收盘 / best "
                 f"{len(best)}, net + unrealised PnL at each UTC day's end）</h2><div class=\"card\">")
    parts.append(line_chart(lines, marker_ms=meta.get("split_time_ms"), marker_label="样本外 out-of-sample →"))
    parts.append("</div>")
    if walk:
        oos_lines = [(label, colour, meta["oos_day_end_ms"], [float(v) for v in r["oos_daily_equity"]])
                     for (label, colour, _t, _v), r in zip(lines, best, strict=True)]
        parts.append("<h2>样本外资金曲线 / Out-of-sample equity（从切分点重新开始 / a fresh start at the cut）</h2>"
                     f'<div class="card">{line_chart(oos_lines)}</div>')
        points = [(r["in_sample"]["net_pnl_usdt"], r["out_of_sample"]["net_pnl_usdt"], set_label(r["summary"]),
                   r["rank"] == 1) for r in ordered]
        parts.append("<h2>样本内 vs 样本外 / In-sample vs out-of-sample（每个点是一组参数 / one dot per set）</h2>"
                     f'<div class="card">{scatter(points)}<p class="meta">'
                     "右上象限：两段都盈利；右下象限：样本内赚钱、样本外亏钱（过度拟合的典型样子）。"
                     "红点是样本内排名第一的参数组。 / Top right: profitable in both parts; bottom right: "
                     "made money in-sample and lost it out of sample (what overfitting looks like). "
                     "The red dot is the best in-sample set.</p></div>")

    # How to check a set, and what the figures mean.
    if ordered:
        s = ordered[0]["summary"]
        settings = [f"BOLL_PERIOD = {s['boll_period']}", f"BOLL_K = {s['boll_k']!r}"]
        for name, key, off in (("EVALUATE_ON", "evaluate_on", "tick"),
                               ("BREAKOUT_BUFFER_PCT", "breakout_buffer_pct", 0),
                               ("STOP_COOLDOWN_CANDLES", "stop_cooldown_candles", 0),
                               ("PAPER_SLIPPAGE_PCT", "slippage_pct", 0)):
            if s[key] != off:
                settings.append(f"{name} = {s[key]!r}")
        cmd = (f"python bollmin.py backtest --klines {meta['source_file']} --interval {s['interval']} --json"
               f"  # with {', '.join(settings)} in --config")
        parts.append(f"<footer><p>复核第 1 名 / check the best set: <code>{_e(cmd)}</code> — 整个文件的数字与 backtest "
                     "完全相同 / its whole-file figures are exactly backtest's.</p>")
    else:
        parts.append("<footer>")
    parts.append("<p>净盈亏 = 已实现盈亏 − 手续费 − 资金费；胜率按扣除双边手续费后的每笔来回交易；"
                 "最大回撤按每个 tick 的盯市权益；盈亏比 = 盈利交易之和 / 亏损交易之和；"
                 "夏普 = 日盈亏均值 / 标准差 × √365；持仓 = 有仓位的时间占比。"
                 " / Net PnL = realised − fees − funding; win rate per round trip after both fees; max drawdown of "
                 "mark-to-market equity at every tick; profit factor = winning trades' sum / losing trades' sum; "
                 "Sharpe = mean / sd of daily PnL × √365; exposure = share of the time with a position.</p>"
                 "<p>过去的表现不代表未来。 / Past results do not predict future ones.</p></footer>")
    parts.append("</main></body></html>")
    return "".join(parts)


def write_report(path: str, meta: dict[str, Any], ordered: list[dict[str, Any]], top: int) -> None:
    """Write the report atomically (a reader never sees half a file)."""
    text = render(meta, ordered, top)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
