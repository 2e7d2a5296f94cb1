"""The one markdown table of a comparison run: a row per system, then ratios ours / peer."""

from __future__ import annotations

GIB = 1024**3


def columns(counts: list[int]) -> list[tuple[str, callable, int]]:
    """(header, how to read it from a system's result, decimals)."""
    cols = [
        ("1-stream decode tok/s", lambda r: r.get("single_decode"), 1),
        ("TTFT ms", lambda r: r["ttft_s"] * 1000 if r.get("ttft_s") is not None else None, 0),
    ]
    for n in counts:
        cols.append((f"{n} requests tok/s", lambda r, n=n: (r.get("batched") or {}).get(str(n)), 1))
    cols += [
        ("start-up s", lambda r: r.get("startup_s"), 1),
        ("peak RSS GiB", lambda r: r["peak_rss_bytes"] / GIB if r.get("peak_rss_bytes") else None, 2),
    ]
    return cols


def render(results: dict[str, dict], counts: list[int], ours: str | list[str] = "Med-vLLM") -> str:
    """`results`: system name -> summarized result (status "ok" or the reason it has no figures).
    `ours`: the Med-vLLM row(s); each gets a ratio row against every peer that has figures."""
    cols = columns(counts)
    ours = [ours] if isinstance(ours, str) else ours
    lines = ["| system | " + " | ".join(h for h, _, _ in cols) + " | what ran |", "|---" * (len(cols) + 2) + "|"]
    for name, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | " + " | ".join("—" for _ in cols) + f" | {r.get('status')} |")
            continue
        cells = [_number(get(r), decimals) for _, get, decimals in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('label', '')} |")
    for mine_name in ours:
        mine = results.get(mine_name)
        if not mine or mine.get("status") != "ok":
            continue
        for name, r in results.items():
            if name in ours or r.get("status") != "ok":
                continue
            cells = [_ratio(get(mine), get(r)) for _, get, _ in cols]
            lines.append(f"| {mine_name} / {name} | " + " | ".join(cells) + " | ratio ours / peer |")
    return "\n".join(lines)


def _number(value, decimals: int) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def _ratio(a, b) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}×"
