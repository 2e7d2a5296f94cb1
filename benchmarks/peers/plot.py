"""Output tok/s against parallel requests, one line per system that measured them (matplotlib)."""

from __future__ import annotations


def plot(results: dict[str, dict], levels: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        if r.get("status") != "ok":
            continue
        points = [(n, (r.get("batched") or {}).get(str(n))) for n in levels]
        points = [(n, v) for n, v in points if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_xlabel("parallel requests")
    ax.set_ylabel("output tokens/s (prefill included)")
    ax.set_title(title, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
