"""Several sessions on one accelerator: a step scheduler with chunked prefill (docs/driver.md).

:class:`Scheduler` keeps a set of sessions (``submit``), each a prompt, a sampling setting and stop ids,
with its own KV region and program on the device (``Accelerator.new_cache``). :meth:`Scheduler.step`
runs one **step** of at most ``token_budget`` tokens:

1. **decodes first**: one run per decoding session, one token each, in session order;
2. then **prefill chunks** fill the rest of the budget, first come first served: each chunk is at most
   ``limits.max_chunk`` tokens (the compiled ``max_chunk``) and never more than the budget left, so a long
   prompt is spread over several steps (Sarathi-style chunked prefill) and a decoding session waits at
   most one step's budget for its next token.

Every run's cost comes from the device: ``run_cycles`` (the CSR, via ``Accelerator.run_log``) on devices
that count cycles (``verilator``, a board), and on the ``isa`` device, which counts no cycles, the work it
did (DRAM bytes read and written, multiply-accumulates). The scheduler keeps one device clock, the sum of
the costs of all runs so far (the device runs one program at a time). A token's event is stamped with
the clock at the end of the run that produced its logits, so

* **time to first token** (TTFT) = clock at the first token - clock at ``submit``;
* **time between tokens** (TBT) = the clock difference between consecutive tokens of a session, that is
  the costs of every run (any session's) in between;

in cycles, and as seconds at the config's ``clock_mhz`` (a projection of the simulated RTL's cycles, not
a measurement on hardware).

``policy="layer-group"`` bounds a step's prefill work by layers instead of by tokens. The budget is
counted in **token-layers** (``token_budget * layers``; a decode takes ``layers``). A prefill chunk keeps
its full size (up to ``max_chunk`` tokens, and at most ``token_budget * layers``, so one layer of it fits a
step), and each step runs it through the next group of layers that fits the budget left
(``layer_group`` caps the group). The residual stream waits in the session's stash in DRAM between
groups (``SAVE_X`` / ``LOAD_X``, ``firmware.compiler.group_program``). With a small budget, chunked
prefill cuts a prompt into small chunks and streams every weight once per small chunk; layer-group
streams them once per full chunk, for the same bound on how long a decode waits.

In both policies a prefill chunk that is not its prompt's last runs without the LM head (``LOGITS``): only
its KV cache is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from golden.model_int import ContextOverflowError

from .device import DeviceError
from .kv_manager import KvMemoryError
from .sampling import SamplingParams, select_token

__all__ = ["Scheduler", "SessionState", "TokenEvent", "POLICIES", "serve", "format_report"]

POLICIES = ("chunked", "layer-group")


@dataclass
class TokenEvent:
    """A generated token of a session (``index``: 0 for the first), with the device clock at its run's end."""

    session: int
    token: int
    index: int
    step: int
    clock: dict


@dataclass
class SessionState:
    """One session of a :class:`Scheduler`."""

    id: int
    prompt: list
    max_new_tokens: int
    params: SamplingParams
    stop_ids: frozenset
    cache: object
    submitted: dict                     # device clock at submit
    prefilled: int = 0                  # prompt tokens run so far
    pending: int = None                 # the last sampled token, fed to the next decode
    tokens: list = field(default_factory=list)
    stamps: list = field(default_factory=list)     # device clock of each token
    stop_reason: str = ""
    error: str = ""                     # the device error that ended the session, if one did
    kv_region: tuple = ()               # (kv_base, positions) of its KV region
    prefill_runs: int = 0
    decode_runs: int = 0
    chunk: int = 0                      # layer-group: tokens of the chunk in flight (0: none)
    layers_done: int = 0                # layer-group: layers the chunk in flight has been through

    @property
    def state(self):
        if self.stop_reason:
            return "done"
        if self.cache is None:
            return "waiting"            # queued for a KV region (submit(..., wait=True))
        return "prefill" if self.prefilled < len(self.prompt) else "decode"


def _zero_clock():
    return {"cycles": 0, "dram_read_bytes": 0, "dram_write_bytes": 0, "macs": 0, "runs": 0}


def _diff(a, b):
    return {k: a[k] - b[k] for k in a}


class Scheduler:
    """Sessions sharing one :class:`firmware.accelerator.Accelerator` (see the module docstring).

    Parameters
    ----------
    accelerator : firmware.accelerator.Accelerator
    policy : str
        ``"chunked"`` (decodes first, then prefill chunks up to the budget) or ``"layer-group"`` (decodes
        first, then full prefill chunks through groups of layers up to the budget in token-layers).
    token_budget : int or None
        Tokens per step, decodes included (default: the compiled ``max_chunk``, ``limits.max_chunk``).
    layer_group : int or None
        ``layer-group`` only: most layers per prefill run (default: as many as the budget allows).
    """

    def __init__(self, accelerator, policy="chunked", token_budget=None, layer_group=None):
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r} (available: {', '.join(POLICIES)})")
        self.accel = accelerator
        self.max_chunk = accelerator.compiled.max_chunk
        budget = self.max_chunk if token_budget is None else token_budget
        if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 1:
            raise ValueError(f"token_budget must be an integer >= 1 (tokens per step, decodes included), got "
                             f"{token_budget!r}")
        self.policy, self.token_budget = policy, int(budget)
        self.layers = accelerator.compiled.layers
        if layer_group is not None:
            if policy != "layer-group":
                raise ValueError(f"layer_group applies to policy 'layer-group' only (policy is {policy!r})")
            if not isinstance(layer_group, (int, np.integer)) or isinstance(layer_group, bool) or \
                    not 1 <= layer_group <= self.layers:
                raise ValueError(f"layer_group must be an integer in 1..{self.layers} (the model's layers), got "
                                 f"{layer_group!r}")
        self.layer_group = None if layer_group is None else int(layer_group)
        self.counts_cycles = accelerator.device.name != "isa"
        self.sessions = {}
        self.clock = _zero_clock()
        self.steps = 0
        #: One dict per step: ``step``, ``decodes`` [(session, pos)], ``prefills`` [(session, pos, n)] or, in
        #: ``layer-group``, [(session, pos, n, (first, last))], ``tokens`` (run tokens), ``token_layers`` (tokens
        #: times the layers they went through), ``decoding`` (sessions decoding at the step's start), ``cost`` and
        #: ``events`` [(session, token)].
        self.log = []

    # -- sessions --------------------------------------------------------------------------------------
    def submit(self, prompt_tokens, max_new_tokens=32, *, temperature=0.0, top_k=None, top_p=None, seed=None,
               stop_ids=None, wait=False):
        """Add a session; returns its id. Its KV region (``len(prompt) + max_new_tokens`` positions) and
        program are allocated now, or, with ``wait=True`` and no room, at the first step after other sessions
        have freed enough (sessions are admitted in submission order; its TTFT counts the wait).

        Raises
        ------
        ValueError
            Empty prompt, a token id outside the vocabulary, ``max_new_tokens`` < 1, bad sampling settings.
        ContextOverflowError
            If the prompt plus ``max_new_tokens`` exceeds the accelerator's context.
        firmware.kv_manager.KvMemoryError
            If the KV arena (or the program slots) cannot hold another session of this size.
        """
        cfg = self.accel.config
        prompt = [int(t) for t in np.asarray(prompt_tokens, dtype=np.int64).reshape(-1)]
        if not prompt:
            raise ValueError("empty prompt: a session needs at least one token")
        bad = [t for t in prompt if not 0 <= t < cfg.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} outside the vocabulary 0..{cfg.vocab_size - 1}")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        params = SamplingParams(temperature, top_k, top_p, seed)
        need = len(prompt) + max_new_tokens
        ctx = self.accel.max_context
        if need > ctx:
            raise ContextOverflowError(f"session {len(self.sessions)}: prompt of {len(prompt)} tokens + "
                                       f"{max_new_tokens} new tokens = {need} positions exceeds the context of "
                                       f"{ctx} positions")
        stops = frozenset(cfg.eos_token_ids if stop_ids is None else (int(s) for s in stop_ids))
        sid = len(self.sessions)
        cache = None
        if not (wait and any(x.state == "waiting" for x in self.sessions.values())):   # keep the order
            try:
                cache = self.accel.new_cache(need)
            except KvMemoryError:
                if not wait:
                    raise
                if not self.active:
                    raise                # nothing will ever free room for it
        state = SessionState(sid, prompt, max_new_tokens, params, stops, cache, dict(self.clock))
        if cache is not None:
            state.kv_region = (cache.region.base, cache.region.max_context)
        self.sessions[sid] = state
        return sid

    def _admit(self):
        """Give waiting sessions their KV regions, in submission order, while they fit."""
        for s in self.sessions.values():
            if s.state != "waiting":
                continue
            try:
                s.cache = self.accel.new_cache(len(s.prompt) + s.max_new_tokens)
            except KvMemoryError:
                if not any(x.state in ("prefill", "decode") for x in self.sessions.values()):
                    raise                # nothing running will ever free room for it
                return
            s.kv_region = (s.cache.region.base, s.cache.region.max_context)

    @property
    def active(self):
        return [s for s in self.sessions.values() if s.state != "done"]

    def done(self):
        return not self.active

    # -- running ---------------------------------------------------------------------------------------
    def _run(self, s, tokens, layers=None, want_logits=True):
        """One run of session ``s``: its last logits row (an empty array when not wanted or the run ends before
        the last layer), or None if the device refused the run (the session ends with ``stop_reason``
        ``"device_error"``; the other sessions go on, their regions untouched)."""
        acc = self.accel
        n_log = len(acc.run_log)
        try:
            logits = acc.run_chunk(tokens, s.cache, all_logits=False, read_logits=want_logits, layers=layers)
        except DeviceError as e:
            s.error = str(e)
            self._finish(s, "device_error")
            logits = None
            failed = True
        else:
            failed = False
        if len(acc.run_log) > n_log:
            self._account(acc.run_log[-1])
        if failed:
            return None
        return np.zeros(0, np.int64) if logits is None else logits[-1]

    def _account(self, r):
        w = r["work"] or {}
        c = self.clock
        c["cycles"] += r["run_cycles"]
        c["dram_read_bytes"] += w.get("dram_read_bytes", 0)
        c["dram_write_bytes"] += w.get("dram_write_bytes", 0)
        c["macs"] += w.get("ternary_macs", 0) + w.get("attention_macs", 0) + w.get("lm_head_macs", 0)
        c["runs"] += 1

    def _emit(self, s, logits, events):
        """Sample the session's next token from ``logits``; an event unless it is a stop id."""
        tok = select_token(logits.astype(np.float64) / 65536.0, s.params)
        if tok in s.stop_ids:
            self._finish(s, "stop_id")
            return
        s.tokens.append(tok)
        s.stamps.append(dict(self.clock))
        events.append(TokenEvent(s.id, tok, len(s.tokens) - 1, self.steps, dict(self.clock)))
        if len(s.tokens) >= s.max_new_tokens:
            self._finish(s, "max_new_tokens")
        else:
            s.pending = tok

    def _finish(self, s, reason):
        s.stop_reason = reason
        s.pending = None
        if s.cache is not None and not s.cache.freed:
            self.accel.free(s.cache)

    def step(self):
        """Run one step (decodes first, then prefill chunks up to the budget); returns its
        :class:`TokenEvent` list (empty when every session is done)."""
        events = []
        self._admit()
        start = dict(self.clock)
        decoding = [s for s in self.sessions.values() if s.state == "decode"]
        rec = {"step": self.steps, "decoding": [s.id for s in decoding], "decodes": [], "prefills": []}
        budget = self.token_budget
        for s in decoding:
            rec["decodes"].append((s.id, s.cache.length))
            logits = self._run(s, [s.pending])
            s.decode_runs += 1
            budget -= 1
            if logits is not None:
                self._emit(s, logits, events)
        prefilling = [s for s in self.sessions.values() if s.state == "prefill"]
        if self.policy == "chunked":
            self._chunked_prefill(prefilling, budget, rec, events)
        else:
            self._layer_group_prefill(prefilling, budget * self.layers, rec, events)
        rec["tokens"] = len(rec["decodes"]) + sum(p[2] for p in rec["prefills"])
        rec["token_layers"] = self.layers * len(rec["decodes"]) + sum(
            p[2] * ((p[3][1] - p[3][0]) if len(p) > 3 else self.layers) for p in rec["prefills"])
        rec["cost"] = _diff(self.clock, start)
        rec["events"] = [(e.session, e.token) for e in events]
        if rec["tokens"]:
            self.log.append(rec)
            self.steps += 1
        return events

    def _chunked_prefill(self, prefilling, budget, rec, events):
        for s in prefilling:
            while budget > 0 and s.prefilled < len(s.prompt):
                n = min(self.max_chunk, budget, len(s.prompt) - s.prefilled)
                chunk = s.prompt[s.prefilled:s.prefilled + n]
                rec["prefills"].append((s.id, s.prefilled, n))
                final = s.prefilled + n == len(s.prompt)
                logits = self._run(s, chunk, want_logits=final)
                s.prefill_runs += 1
                budget -= n
                if logits is None:
                    break
                s.prefilled += n
                if final:
                    self._emit(s, logits, events)
            if budget <= 0:
                break

    def _layer_group_prefill(self, prefilling, budget, rec, events):
        """Prefill runs of whole chunks through groups of layers while ``budget`` (token-layers) lasts."""
        L = self.layers
        for s in prefilling:
            while s.prefilled < len(s.prompt):
                if not s.chunk:
                    s.chunk = min(self.max_chunk, len(s.prompt) - s.prefilled, self.token_budget * L)
                    s.layers_done = 0
                n = s.chunk
                g = min(L - s.layers_done, budget // n, self.layer_group or L)
                if g < 1:
                    return
                first, last = s.layers_done, s.layers_done + g
                chunk = s.prompt[s.prefilled:s.prefilled + n]
                rec["prefills"].append((s.id, s.prefilled, n, (first, last)))
                final = s.prefilled + n == len(s.prompt)
                logits = self._run(s, chunk, layers=(first, last), want_logits=final)
                s.prefill_runs += 1
                budget -= n * g
                if logits is None:
                    break
                s.layers_done = last
                if last == L:
                    s.prefilled += n
                    s.chunk = 0
                    if final:
                        self._emit(s, logits, events)

    def stream(self):
        """Run steps until every session is done, yielding each :class:`TokenEvent` as it is made."""
        while not self.done():
            yield from self.step()

    def run_until_done(self):
        """Run every session to the end; returns :meth:`report`."""
        for _ in self.stream():
            pass
        return self.report()

    # -- the report ------------------------------------------------------------------------------------
    def _seconds(self, cycles):
        return cycles / (self.accel.hw.clock_mhz * 1e6)

    def report(self):
        """Per session: tokens, stop reason, TTFT and TBT (cycles and projected seconds on devices that count
        cycles; DRAM bytes and MACs from the ISA simulator's work counts on ``isa``)."""
        hw = self.accel.hw
        out = {"device": self.accel.device.name, "hw": hw.name, "clock_mhz": hw.clock_mhz, "policy": self.policy,
               "token_budget": self.token_budget, "layer_group": self.layer_group, "steps": self.steps, "runs": self.clock["runs"],
               "cost_source": ("run_cycles CSR of the device" if self.counts_cycles else
                               "the isa device counts no cycles: DRAM bytes and MACs from its work counts"),
               "sessions": []}
        if self.counts_cycles:
            out["projection_note"] = (f"seconds are a projection: device cycles at the '{hw.name}' config's "
                                      f"clock_mhz = {hw.clock_mhz}, not a measurement")
        for s in self.sessions.values():
            d = {"session": s.id, "prompt_tokens": len(s.prompt), "tokens": list(s.tokens),
                 "stop_reason": s.stop_reason or s.state, "error": s.error or None, "prefill_runs": s.prefill_runs,
                 "decode_runs": s.decode_runs, "max_len": len(s.prompt) + s.max_new_tokens,
                 "kv_base": s.kv_region[0] if s.kv_region else None,
                 "kv_region_positions": s.kv_region[1] if s.kv_region else None}
            ttft = _diff(s.stamps[0], s.submitted) if s.stamps else None
            tbt = [_diff(b, a) for a, b in zip(s.stamps, s.stamps[1:])]
            if self.counts_cycles:
                d["ttft_cycles"] = ttft["cycles"] if ttft else None
                d["ttft_s_projected"] = self._seconds(ttft["cycles"]) if ttft else None
                cyc = [t["cycles"] for t in tbt]
                d["tbt_cycles_mean"] = float(np.mean(cyc)) if cyc else None
                d["tbt_cycles_max"] = max(cyc) if cyc else None
                d["tbt_s_projected_mean"] = self._seconds(d["tbt_cycles_mean"]) if cyc else None
            else:
                for k in ("dram_read_bytes", "dram_write_bytes", "macs"):
                    d[f"ttft_{k}"] = ttft[k] if ttft else None
                    vals = [t[k] for t in tbt]
                    d[f"tbt_{k}_mean"] = float(np.mean(vals)) if vals else None
            d["ttft_runs"] = ttft["runs"] if ttft else None
            d["tbt_runs_max"] = max((t["runs"] for t in tbt), default=None)
            out["sessions"].append(d)
        return out


def format_report(rep):
    """The per-session report of :meth:`Scheduler.report` as a text table."""
    cyc = "ttft_cycles" in (rep["sessions"][0] if rep["sessions"] else {})
    lines = [f"{rep['device']} device, hw '{rep['hw']}', policy {rep['policy']}, token budget "
             f"{rep['token_budget']}: {rep['steps']} steps, {rep['runs']} runs; cost: {rep['cost_source']}"]
    if cyc:
        head = f"{'session':>7} {'prompt':>6} {'new':>4} {'stop':<15} {'TTFT cycles':>12} {'TTFT s*':>10} " \
               f"{'TBT cycles':>11} {'TBT max':>9} {'TBT s*':>10}"
        lines.append(head)
        for d in rep["sessions"]:
            def f(v, fmt):
                return "-" if v is None else format(v, fmt)
            lines.append(f"{d['session']:>7} {d['prompt_tokens']:>6} {len(d['tokens']):>4} {d['stop_reason']:<15} "
                         f"{f(d['ttft_cycles'], ',d'):>12} {f(d['ttft_s_projected'], '.3e'):>10} "
                         f"{f(d['tbt_cycles_mean'], ',.0f'):>11} {f(d['tbt_cycles_max'], ',d'):>9} "
                         f"{f(d['tbt_s_projected_mean'], '.3e'):>10}")
        lines.append("* " + rep["projection_note"])
    else:
        lines.append(f"{'session':>7} {'prompt':>6} {'new':>4} {'stop':<15} {'TTFT DRAM B':>12} {'TTFT MACs':>11} "
                     f"{'TBT DRAM B':>11} {'TBT MACs':>10} {'TTFT runs':>9} {'TBT runs max':>12}")
        for d in rep["sessions"]:
            def f(v, fmt):
                return "-" if v is None else format(v, fmt)
            lines.append(f"{d['session']:>7} {d['prompt_tokens']:>6} {len(d['tokens']):>4} {d['stop_reason']:<15} "
                         f"{f(d['ttft_dram_read_bytes'], ',d'):>12} {f(d['ttft_macs'], ',d'):>11} "
                         f"{f(d['tbt_dram_read_bytes_mean'], ',.0f'):>11} {f(d['tbt_macs_mean'], ',.0f'):>10} "
                         f"{f(d['ttft_runs'], 'd'):>9} {f(d['tbt_runs_max'], 'd'):>12}")
        lines.append("(DRAM B: bytes read; TTFT from submit, TBT mean between consecutive tokens; no cycles on isa)")
    return "\n".join(lines)


def serve(accelerator, prompts, max_new_tokens=32, *, temperature=0.0, top_k=None, top_p=None, seed=None,
          stop_ids=None, token_budget=None, policy="chunked", layer_group=None, on_token=None):
    """Generate for several prompts (token-id lists) at once on one accelerator: the multi-prompt
    ``generate()``. ``on_token(session, token)`` streams the tokens as they are made; ``max_new_tokens``
    is one value or one per prompt. Each session samples with its own generator seeded by ``seed`` (the
    same tokens as a single-session run with that seed). Returns :meth:`Scheduler.report`.
    """
    sched = Scheduler(accelerator, policy=policy, token_budget=token_budget, layer_group=layer_group)
    news = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
    if len(news) != len(prompts):
        raise ValueError(f"{len(news)} max_new_tokens values for {len(prompts)} prompts")
    if not prompts:
        raise ValueError("serve needs at least one prompt")
    try:
        for p, n in zip(prompts, news):
            sched.submit(p, n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids,
                         wait=True)
        for ev in sched.stream():
            if on_token:
                on_token(ev.session, ev.token)
    finally:
        for s in sched.sessions.values():
            if not s.cache.freed:
                accelerator.free(s.cache)
    return sched.report()
