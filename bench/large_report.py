"""The ``large-cache`` section of bench/RESULTS.md, from ``bench/large_cache.py``'s figures:
each size's figures for each code measured (today's, and a baseline revision's) side by side."""

from __future__ import annotations

from typing import Any

__all__ = ["report"]

# (label, key, scale, unit)
ROWS = [
    ("first open by this code (today's adds its tables, once)", "first_open_s", 1, "s"),
    ("open: `Store(dir)` (in-process)", "open_only_s", 1e3, "ms"),
    ("`len(store)`", "len_s", 1e3, "ms"),
    ("open: new process, import + open", "open_wall_s", 1e3, "ms"),
    ("warm read, 10k random texts, new process, µs/text", "read_us", 1, "µs"),
    ("another 10k random texts in that process, µs/text", "read_again_us", 1, "µs"),
    ("floor (xxh3-128 + dict + gather), µs/text", "floor_us", 1, "µs"),
    ("floor from disk (xxh3-128 + dict + one `pread` a vector), µs/text", "floor_disk_us", 1, "µs"),
    ("store one entry (a fill), no size limit", "put_ms", 1, "ms"),
    ("store one entry, with a size limit set", "put_limited_ms", 1, "ms"),
    ("`stats --json` (new process, median of 3)", "stats_s", 1, "s"),
    ("`ls` first line", "ls_first_s", 1e3, "ms"),
    ("`ls --json --limit N` (all) > /dev/null", "ls_all_s", 1, "s"),
    ("`verify --json`", "verify_s", 1, "s"),
    ("`export --out X`", "export_s", 1, "s"),
    ("`prune --max-size` (drops oldest 10%)", "prune_s", 1, "s"),
    ("`Store.compact(0.05)` after it", "compact_s", 1, "s"),
    ("a writer's worst wait while prune runs (one new text a call)", "prune_write_max_ms", 1, "ms"),
    ("a writer's worst wait while compact runs", "compact_write_max_ms", 1, "ms"),
    ("a reader's worst read (100 texts) while prune runs", "prune_read_max_ms", 1, "ms"),
    ("a reader's worst read while compact runs", "compact_read_max_ms", 1, "ms"),
    ("idle: a writer's worst wait (5 s)", "idle_write_max_ms", 1, "ms"),
    ("idle: a reader's worst read (5 s)", "idle_read_max_ms", 1, "ms"),
]
RSS = ("read", "stats", "verify", "ls_all", "export", "prune", "compact")


def _cell(run: dict[str, Any] | None, key: str, scale: float, unit: str) -> str:
    if run is None or run.get(key) is None:
        return ""
    return f"{run[key] * scale:,.2f} {unit}"


def report(figures: dict[str, Any], sizes: list[int], codes: list[str]) -> str:
    """The section's Markdown for ``sizes`` and ``codes`` (figures as large_cache keeps them)."""
    runs = {(n, code): figures["codes"].get(code, {}).get(str(n)) for n in sizes for code in codes}
    columns = [(n, code) for n in sizes for code in codes]
    header = " | ".join(f"{n:,} {code}" for n, code in columns)
    some = next((run for run in runs.values() if run), {})
    lines = [
        f"## Large caches: {', '.join(f'{n:,}' for n in sizes)} entries (`bench/large_cache.py`)",
        "",
        "Commands (each group of rows from the run that last measured it):",
        "",
        *(
            f"- {group}: `{run['command']}`, {run['load']}"
            for group, run in sorted(figures["runs"].items())
        ),
        "",
        "64-d vectors, synthetic texts, one cache per size built through `Store.put_matrix` "
        f"({some.get('build_rate', 0):,.0f} entries/s for the largest built); each code "
        "measured on its own copy of it, each operation a fresh process. The writer embeds "
        "one new text per call through `JinaEmbeddingFunction` against the bundled emulator "
        "(its wait includes that round trip); the reader reads 100 surviving texts per call.",
        "",
        f"| operation | {header} |",
        "|---|" + "---:|" * len(columns),
    ]
    for label, key, scale, unit in ROWS:
        cells = [_cell(runs[column], key, scale, unit) for column in columns]
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reading the read rows: the in-memory floor has every vector in the process already; "
        "a read from a cache on disk cannot do less than the second floor, one `pread` per "
        "vector (about 2 µs on this VM, whose page faults cost more still, which is why "
        "vectors are read, not mapped). Keying, the snapshot search (a fresh process faults "
        "in the pages of the snapshot's columns it touches: the read's RSS is mostly those "
        "file pages) and the checksum come on top. Every code reads the same cache, built by "
        "today's code: an older code finds today's index layout and snapshot in it, so its "
        "figures here are not those of a cache it built itself.",
    ]
    lines += ["", "Peak RSS of each command (MB, the child's `ru_maxrss`):", "",
              f"| command | {header} |", "|---|" + "---:|" * len(columns)]  # fmt: skip
    for name in RSS:
        cells = [_cell(runs[column], f"{name}_rss_mb", 1, "") for column in columns]
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Puts and reads done while each ran:", "",
              f"| | {header} |", "|---|" + "---:|" * len(columns)]  # fmt: skip
    for what in ("prune", "compact"):
        for kind in ("writes", "reads"):
            cells = [str((runs[column] or {}).get(f"{what}_{kind}", "")) for column in columns]
            if any(cells):
                lines.append(f"| {kind} during {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
