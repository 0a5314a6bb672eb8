"""What one abusive client does to ``embedcache serve``: worker memory, and other clients' hits.

Usage (or ``tox -e bench-abuse``)::

    python bench/proxy_abuse.py                     # about 5 minutes; writes RESULTS.md
    python bench/proxy_abuse.py --baseline 02a92bb  # also the server as it was (twice as long)
    python bench/proxy_abuse.py --quick             # smaller cases, to check the script

Each case runs alone against a fresh ``embedcache serve --workers 1`` (so the worker is the
serve process itself and its ``VmHWM`` is the case's own peak) on a copy of a prewarmed cache,
in front of the bundled Jina emulator (``embedcache.testing``, in its own process):

- *pipelining*: one connection sends 12,000 cached-hit requests and never reads;
- *100,000 inputs*: one request of 100,000 copies of a cached text, then one of distinct
  short texts, while a normal client makes hits;
- *stalled bodies*: against a ``--token`` proxy, 8 connections without credentials each send
  60 MiB of a body they never finish, then stall;
- *aborted uploads*: 20 uploads in turn, each 32 MiB of an unfinished body, then closed;
- *slowhttptest -H* and *-B* (Debian's) for 20 s, 500 connections, during normal hits;
- *idle*: how long idle connections stay open (after an answer; silent; head unfinished).

The *normal client* makes one cached hit at a time (5 ms apart) on a kept-alive
connection. Worker RSS: ``/proc/PID/status`` (``VmRSS``; ``VmHWM`` for peaks). Bounds: RSS
growth under 64 MiB in every case; the normal client's p99 under 50 ms with no failed
request during the 100,000-input and slow attacks; idle connections closed before the
wait's cap. Every client loop is bounded in count and time; a worker above ``--rss-cap``
is killed (the old code's peak was 7.4 GB).
Clients and the server handle: ``bench/abuseclients.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from abuseclients import (
    MIB,
    TEXTS,
    Code,
    Figure,
    Proxy,
    Wire,
    body_prefix,
    closed_by_peer,
    growth,
    head,
    mib,
    probing,
    request,
    send_all,
)  # fmt: skip
from loadclient import HOST, KEY, body_of
from loadservers import Emulator, child_setup
from results import baseline_tree, write_section

SECTION = "proxy-abuse"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HARDENING = (  # the options the hardening adds, shown when the code has them
    "--idle-timeout", "--header-timeout", "--body-timeout", "--send-timeout",
    "--max-connections", "--max-body", "--max-body-memory", "--max-inputs", "--max-answer",
    "--drain-timeout",
)  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    pipelined: int
    inputs: int
    stalled: int  # connections
    stalled_mib: int
    uploads: int
    upload_mib: int
    slow_seconds: int
    slow_connections: int
    idle_cap: float
    settle: float  # seconds to let the worker settle before "during" and "after" figures
    send_seconds: float  # most time a client spends sending one case's bytes
    answer_seconds: float  # most time to wait for one answer of a 100,000-input request


FULL = Sizes(12_000, 100_000, 8, 60, 20, 32, 20, 500, 60.0, 3.0, 30.0, 240.0)
QUICK = Sizes(1_200, 10_000, 8, 6, 4, 8, 4, 100, 12.0, 1.0, 10.0, 60.0)


# The cases


@dataclass
class Bench:
    root: Path
    sizes: Sizes
    emulator: Emulator
    cap: float
    seeds: dict[str, Path]

    @contextmanager
    def fresh(self, code: Code, case: str, token: bool = False) -> Iterator[Proxy]:
        """A new server on a copy of the prewarmed cache, every hot text served once."""
        name = f"{code.label}-{case}".replace(" ", "_")
        cache = self.root / name
        shutil.copytree(self.seeds[code.label], cache)
        proxy = Proxy(code, cache, self.emulator.url, self.root / f"{name}.log", self.cap, token)
        try:
            wire = Wire(proxy.port, 30.0)
            for text in TEXTS * 2:
                wire.sock.sendall(request(proxy.port, body_of([text]), proxy.bearer))
                status, _ = wire.answer()
                if status != 200:
                    raise RuntimeError(f"a warm-up hit failed ({status}); see {proxy.log}")
            wire.close()
            time.sleep(0.2)
            proxy.mark()
            yield proxy
        finally:
            proxy.stop()

    def killed(self, proxy: Proxy, case: str) -> list[Figure]:
        if not proxy.killed:
            return []
        return [Figure(case, "worker killed", f"above --rss-cap {self.cap:.0f} MiB", False)]

    def pipelining(self, code: Code) -> list[Figure]:
        case, n = f"pipelining {self.sizes.pipelined:,} hits, never read", self.sizes.pipelined
        with self.fresh(code, "pipelining") as proxy:
            before = proxy.rss()
            data = [request(proxy.port, body_of([TEXTS[i % len(TEXTS)]]), KEY) for i in range(n)]
            sock = socket.create_connection((HOST, proxy.port))
            sent = send_all(sock, b"".join(data), self.sizes.send_seconds)
            time.sleep(self.sizes.settle)
            during, top = proxy.rss(), proxy.top
            sock.close()
            time.sleep(self.sizes.settle)
            after = proxy.rss()
            return [
                Figure(case, f"requests sent (it gives up after {self.sizes.send_seconds:.0f} s)",
                       f"{sent // len(data[0]):,} of {n:,}"),
                Figure(case, "RSS before / during / after close",
                       f"{mib(before)} / {mib(during)} / {mib(after)}"),
                growth(case, "RSS growth (highest during - before)", top - before),
                *self.killed(proxy, case),
            ]  # fmt: skip

    def many_inputs(self, code: Code, distinct: bool) -> list[Figure]:
        n = self.sizes.inputs
        kind = "distinct short texts" if distinct else "copies of a cached text"
        case = f"{n:,} inputs: {kind}"
        texts = [f"abuse {i:07d}" for i in range(n)] if distinct else [TEXTS[0]] * n
        body = body_of(texts)
        out: list[Figure] = []
        with self.fresh(code, "distinct" if distinct else "copies") as proxy:
            before = proxy.rss()
            start = time.monotonic()
            with probing(proxy.port, case, self.sizes.answer_seconds + 10, out):
                wire = Wire(proxy.port, 30.0)
                try:  # a server may answer before the body is in, and close
                    send_all(wire.sock, request(proxy.port, body, KEY), self.sizes.send_seconds)
                    status, size = wire.answer(time.monotonic() + self.sizes.answer_seconds)
                    answer = f"{status}, {size / MIB:,.1f} MiB answer"
                except OSError as exc:
                    answer = f"no answer ({exc or type(exc).__name__})"
                finally:
                    wire.close()
                seconds = time.monotonic() - start
            time.sleep(self.sizes.settle)
            after, peak = proxy.rss(), proxy.hwm()
            return [
                Figure(case, "answer (status, size, seconds)",
                       f"{answer} in {seconds:.1f} s ({len(body) / MIB:.1f} MiB body)"),
                Figure(case, "RSS before / after; peak (VmHWM)",
                       f"{mib(before)} / {mib(after)}; {mib(peak)}"),
                growth(case, "RSS growth (peak - before)", peak - before),
                *out,
                *self.killed(proxy, case),
            ]  # fmt: skip

    def stalled(self, code: Code) -> list[Figure]:
        count, size = self.sizes.stalled, self.sizes.stalled_mib * MIB
        case = f"{count} stalled {self.sizes.stalled_mib} MiB bodies, no credentials, --token"
        with self.fresh(code, "stalled", token=True) as proxy:
            before = proxy.rss()
            socks = [socket.create_connection((HOST, proxy.port)) for _ in range(count)]
            answered: dict[int, tuple[int, int]] = {}  # connection: (status, body bytes sent)
            closed: set[int] = set()
            sent = [0] * count
            data = head(proxy.port, size + 1, None) + body_prefix(size)  # one byte never sent
            with selectors.DefaultSelector() as sel:
                for i, sock in enumerate(socks):
                    sock.setblocking(False)
                    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
                deadline = time.monotonic() + self.sizes.send_seconds
                while sel.get_map() and time.monotonic() < deadline:
                    for key, events in sel.select(0.2):
                        i, sock = key.data, socks[key.data]
                        try:
                            if events & selectors.EVENT_READ:
                                got = sock.recv(65536)
                                if got and i not in answered:
                                    status = int(got.split(b" ", 2)[1])
                                    answered[i] = (status, max(0, sent[i] - len(data) + size))
                                if not got:
                                    closed.add(i)
                                if not got or i in answered:
                                    sel.unregister(sock)  # refused: an attacker learns no more
                                    continue
                            if events & selectors.EVENT_WRITE:
                                sent[i] += sock.send(memoryview(data)[sent[i] : sent[i] + 65536])
                                if sent[i] == len(data):
                                    sel.unregister(sock)  # all sent: it stalls from here
                        except BlockingIOError:
                            pass
                        except (OSError, ValueError, IndexError):
                            closed.add(i)
                            sel.unregister(sock)
            for i in answered:  # did the server close after its answer?
                if closed_by_peer(socks[i]):
                    closed.add(i)
            time.sleep(self.sizes.settle)  # stalling
            during, top = proxy.rss(), proxy.top
            for sock in socks:
                sock.close()
            time.sleep(self.sizes.settle)
            after = proxy.rss()
        body = sum(max(0, s - (len(data) - size)) for s in sent)
        statuses = sorted({s for s, _ in answered.values()})
        early = [b for _, b in answered.values()]
        refused = f"{len(answered)} of {count} answered" + (f" {statuses}" if statuses else "")
        if early:
            refused += f" after at most {max(early) / MIB:,.1f} MiB of body"
        return [
            Figure(case, "refused before the body",
                   f"{refused}; {len(closed)} closed by the server"),
            Figure(case, "body bytes sent before the stall or refusal",
                   f"{body / MIB:,.0f} MiB of {count * size / MIB:,.0f}"),
            Figure(case, "RSS before / while stalled / after close",
                   f"{mib(before)} / {mib(during)} / {mib(after)}"),
            growth(case, "RSS growth (highest while stalled - before)", top - before),
            *self.killed(proxy, case),
        ]  # fmt: skip

    def aborted(self, code: Code, notes: list[str]) -> list[Figure]:
        count, size = self.sizes.uploads, self.sizes.upload_mib * MIB
        case = f"{count} aborted {self.sizes.upload_mib} MiB uploads, one after another"
        with self.fresh(code, "aborted") as proxy:
            before = proxy.rss()
            data = head(proxy.port, size + 1024, KEY) + body_prefix(size)
            afters = []
            for _ in range(count):
                sock = socket.create_connection((HOST, proxy.port))
                send_all(sock, data, self.sizes.send_seconds)
                sock.close()
                time.sleep(0.3)
                afters.append(proxy.rss())
            top = proxy.top
            time.sleep(self.sizes.settle)
            after = proxy.rss()
        notes.append(
            f"{code.label}, aborted uploads: RSS before {before:,.0f} MiB, after each upload "
            + ", ".join(f"{a:,.0f}" for a in afters)
            + f" MiB; {after:,.0f} MiB {self.sizes.settle:.0f} s after the last."
        )
        return [
            Figure(case, "RSS before / after the last; highest after one",
                   f"{mib(before)} / {mib(after)}; {mib(max(afters))}"),
            growth(case, "RSS growth (highest - before)", max(top, *afters) - before),
            *self.killed(proxy, case),
        ]  # fmt: skip

    def slow(self, code: Code, mode: str) -> list[Figure]:
        n, seconds = self.sizes.slow_connections, self.sizes.slow_seconds
        case = f"slowhttptest -{mode}, {n} connections, {seconds} s"
        out: list[Figure] = []
        with self.fresh(code, f"slow{mode}") as proxy:
            before = proxy.rss()
            prefix = self.root / f"{code.label}-slow{mode}"
            command = [
                "slowhttptest", f"-{mode}", "-c", str(n), "-r", "200", "-i", "10", "-x", "24",
                "-s", "8192", "-t", "POST", "-p", "3", "-l", str(seconds), "-g", "-o", str(prefix),
                "-u", f"http://{HOST}:{proxy.port}/v1/embeddings",
            ]  # fmt: skip
            with probing(proxy.port, case, seconds + 60, out):
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=seconds + 60,
                    preexec_fn=child_setup(),
                )  # fmt: skip
            top = proxy.top
        # One CSV row a second: seconds, closed, pending, connected, and "service available",
        # which is the connection count while its probe is answered and 0 while not.
        with prefix.with_suffix(".csv").open() as table:
            rows = [[int(cell) for cell in row] for row in list(csv.reader(table))[1:] if row]
        last = rows[-1]
        closed = max(row[1] for row in rows)
        down = sum(1 for row in rows if row[4] == 0)
        text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)  # its colours
        errors = re.findall(r"^error:\s+(\d+)", text, re.M)
        ended = re.findall(r"^Exit status:\s*(.*)$", text, re.M)
        if done.returncode:
            out.append(Figure(case, "slowhttptest", f"exit {done.returncode}: {text[-200:]}"))
        return [
            Figure(case, "connections closed by the server",
                   f"{closed} of {n} (at the end: {last[3]} connected, {last[2]} pending, "
                   f"{errors[-1] if errors else '?'} in error)"),
            Figure(case, "seconds its probe found the service down",
                   f"{down} of {len(rows)} ({ended[-1].strip() if ended else '?'})"),
            growth(case, "RSS growth (highest - before)", top - before),
            *out,
            *self.killed(proxy, case),
        ]  # fmt: skip

    def idle(self, code: Code) -> list[Figure]:
        cap, case = self.sizes.idle_cap, "idle connections"
        with self.fresh(code, "idle") as proxy:
            after_answer = Wire(proxy.port, 30.0)
            after_answer.sock.sendall(request(proxy.port, body_of([TEXTS[0]]), KEY))
            after_answer.answer()
            silent = socket.create_connection((HOST, proxy.port))
            half = socket.create_connection((HOST, proxy.port))
            half.sendall(head(proxy.port, 10, KEY)[:-2])  # headers without the final CRLF
            socks = {"kept alive after an answer": after_answer.sock, "connected, sent nothing":
                     silent, "headers without the final CRLF": half}  # fmt: skip
            start, open_for = time.monotonic(), {}
            with selectors.DefaultSelector() as sel:
                for name, sock in socks.items():
                    sock.setblocking(False)
                    sel.register(sock, selectors.EVENT_READ, name)
                while sel.get_map() and time.monotonic() < start + cap:
                    for key, _ in sel.select(0.2):
                        try:
                            gone = not key.fileobj.recv(65536)  # type: ignore[union-attr]
                        except BlockingIOError:
                            continue
                        except OSError:
                            gone = True
                        if gone:
                            open_for[key.data] = time.monotonic() - start
                            sel.unregister(key.fileobj)
            for sock in socks.values():
                sock.close()
        return [
            Figure(case, f"{name}: closed by the server after",
                   f"{open_for[name]:.1f} s" if name in open_for else f"still open at {cap:.0f} s",
                   name in open_for, f"closed within {cap:.0f} s")
            for name in socks
        ]  # fmt: skip

    def run(self, code: Code, notes: list[str]) -> list[Figure]:
        cases: list[Callable[[], list[Figure]]] = [
            lambda: self.pipelining(code),
            lambda: self.many_inputs(code, distinct=False),
            lambda: self.many_inputs(code, distinct=True),
            lambda: self.stalled(code),
            lambda: self.aborted(code, notes),
            lambda: self.slow(code, "H"),
            lambda: self.slow(code, "B"),
            lambda: self.idle(code),
        ]
        figures: list[Figure] = []
        for case in cases:
            found = case()
            for figure in found:
                verdict = "" if figure.ok is None else (" PASS" if figure.ok else " FAIL")
                print(f"{code.label}: {figure.case}: {figure.name}: {figure.text}{verdict}")
            figures += found
        return figures


def prewarm(bench: Bench, code: Code) -> None:
    """The seed cache of ``code``: every hot text fetched once, by a server since stopped."""
    seed = bench.root / f"seed-{code.label}"
    proxy = Proxy(code, seed, bench.emulator.url, bench.root / f"seed-{code.label}.log", 1e9, False)
    try:
        wire = Wire(proxy.port, 60.0)
        wire.sock.sendall(request(proxy.port, body_of(TEXTS), KEY))
        if wire.answer()[0] != 200:
            raise RuntimeError(f"prewarm failed; see {proxy.log}")
        wire.close()
    finally:
        proxy.stop()
    bench.seeds[code.label] = seed


def code_at(label: str, tree: Path, args: Sequence[str]) -> Code:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    helptext = subprocess.run(
        [sys.executable, "-m", "embedcache", "serve", "--help"],
        capture_output=True, text=True, env=env, cwd=tree, check=True,
    ).stdout  # fmt: skip
    return Code(label, tree, tuple(args), tuple(o for o in HARDENING if o in helptext))


def report(
    command: str, codes: list[Code], found: dict[str, list[Figure]], notes: list[str], load: float
) -> str:
    out = [
        "## What one abusive client does to the proxy (`bench/proxy_abuse.py`)",
        "",
        f"Command: `{command}` (load average {load:.1f} at the start, on 2 shared cores). "
        "Each case alone against a fresh `embedcache serve --workers 1` (its one process is "
        "the worker) on a prewarmed cache, 1024-d, in front of the bundled emulator. RSS "
        "from `/proc/PID/status`; the normal client makes one cached hit at a time on a "
        "kept-alive connection (5 ms apart).",
        "",
    ]
    for code in codes:
        extra = f"; `--serve-args {shlex.join(code.args)}`" if code.args else ""
        has = ", ".join(f"`{o}`" for o in code.options) or "none"
        out.append(f"- {code.label}: hardening options in `serve --help`: {has}{extra}")
    out += ["", "| case | figure | bound | " + " | ".join(c.label for c in codes) + " |"]
    out.append("|---|---|---|" + "---|" * len(codes))
    first = found[codes[0].label]
    for figure in first:
        cells = []
        for code in codes:
            match = [f for f in found[code.label] if (f.case, f.name) == (figure.case, figure.name)]
            if not match:
                cells.append("")
                continue
            verdict = {None: "", True: " **PASS**", False: " **FAIL**"}[match[0].ok]
            cells.append(match[0].text + verdict)
        out.append(
            f"| {figure.case} | {figure.name} | {figure.bound} | " + " | ".join(cells) + " |"
        )
    out.append("")
    for code in codes:
        bounded = [f for f in found[code.label] if f.ok is not None]
        met = sum(1 for f in bounded if f.ok)
        out.append(f"- {code.label}: {met} of {len(bounded)} bounds met.")
    out += [f"- {note}" for note in notes]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="abusive clients against embedcache serve")
    parser.add_argument("--quick", action="store_true", help="smaller cases, no RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    parser.add_argument("--serve-args", default="", help="extra serve options, today's code only")
    parser.add_argument(
        "--baseline", metavar="REV", help="also run every case on the code at this git revision"
    )
    parser.add_argument(
        "--rss-cap", type=float, default=4096, help="MiB: kill a worker above it (default 4096)"
    )
    args = parser.parse_args(argv)
    if shutil.which("slowhttptest") is None:
        raise SystemExit("slowhttptest is not installed (apt-get install slowhttptest)")
    sizes = QUICK if args.quick else FULL
    load = os.getloadavg()[0]
    found: dict[str, list[Figure]] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="embedcache-proxy-abuse-") as tmp:
        root = Path(tmp)
        emulator = Emulator(0.0, root / "emulator.log")
        try:
            codes = [code_at("today", ROOT, shlex.split(args.serve_args))]
            if args.baseline:
                codes.append(code_at(f"at {args.baseline}", baseline_tree(root, args.baseline), ()))
            bench = Bench(root, sizes, emulator, args.rss_cap, {})
            for code in codes:
                prewarm(bench, code)
                found[code.label] = bench.run(code, notes)
        finally:
            emulator.stop()
    # Once the temporary directory is gone: prune drops only work trees whose files are.
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)
    command = "python bench/proxy_abuse.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(command.strip(), codes, found, notes, load)
    print(text)
    if not (args.quick or args.no_write):
        write_section(SECTION, text)
        print(f"written to the {SECTION} section of bench/RESULTS.md")


if __name__ == "__main__":
    main()
