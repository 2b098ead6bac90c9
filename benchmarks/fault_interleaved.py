"""The fault figure: decode throughput while replicas are SIGKILLed ÷ that of an identical fleet without faults.

Two fleets of the same shape run side by side: `reference` is never killed, `faulty` loses one replica
every ~10 s of its own decode time (alternating groups, never a group's last live replica). Rounds of the
same 64-sequence batch alternate between them A B B A A B ..., so the machine's drift (other work on the
shared cores) weighs on both alike. Measured before this design, with the fault-free 40 s run followed by
the faulty 40 s run: 0.66 to 1.29 for the same code under load average 13-22, while the kills themselves
cost a few hundred ms each (benchmarks/disaggregated_vs_monolithic.py's former fault_run, 2026-12-01).
Each kill lands in the middle of a faulty round, so the round it disrupts is counted, and the reference
fleet retires the killed replica's twin from its table at the same moment (see fault_run's `retire`).
Used by benchmarks/disaggregated_vs_monolithic.py.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field

from eaas.engine.sequence import SamplingParams
from eaas.up import wait_healthy

KILL_EVERY_S = 10.0


@dataclass
class Side:
    """One fleet and the engine over it, with what its rounds measured."""

    engine: object
    fleet: object  # expert_fleet.ExpertFleet
    tokens: int = 0
    seconds: float = 0.0
    failed: int = 0
    cpu: float = 0.0
    rounds: list[float] = field(default_factory=list)  # tok/s of each round
    steps: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds) of decode steps

    @property
    def tok_s(self) -> float:
        return self.tokens / max(1e-9, self.seconds)


def one_round(side: Side, batch, new_tokens: int, errors: list[str]) -> None:
    """Decode the batch to the end on side's engine; a failed step fails its requests (counted)."""
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    engine = side.engine
    cpu0, start = cpu_seconds(side.fleet), time.perf_counter()
    seqs = [engine.add_request(p, params).seq for p in batch]
    try:
        while engine.has_unfinished():
            prefill = bool(engine.waiting)
            t = time.perf_counter()
            engine.step()
            if not prefill:
                side.steps.append((t, time.perf_counter() - t))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        for s in list(engine.running) + list(engine.waiting):
            engine.abort(s)  # frees their KV blocks
    elapsed = time.perf_counter() - start
    tokens = sum(len(s.output_ids) for s in seqs)
    side.tokens += tokens
    side.seconds += elapsed
    side.rounds.append(tokens / elapsed)
    side.failed += sum(1 for s in seqs if len(s.output_ids) != new_tokens)
    side.cpu += cpu_seconds(side.fleet) - cpu0


class Killer:
    """Kills one replica of `fleet` per call (alternating groups, never a group's last live one)."""

    def __init__(self, fleet, restart: bool, errors: list[str], on_kill=None):
        self.fleet, self.restart, self.errors, self.on_kill = fleet, restart, errors, on_kill
        self.live = {name for name, _, _ in fleet.members}
        self.kills: list[str] = []
        self.times: list[float] = []
        self.recoveries: list[float] = []
        self.restarts: list[threading.Thread] = []

    def can_kill(self) -> bool:
        return bool(self._groups())

    def _groups(self) -> dict[tuple, list]:
        by_group: dict[tuple, list] = {}
        for name, ex, addr in self.fleet.members:
            if name in self.live:
                by_group.setdefault(ex, []).append((name, addr))
        return {g: m for g, m in sorted(by_group.items()) if len(m) > 1}

    def kill_one(self) -> None:
        groups = self._groups()
        if not groups:
            return
        ex = list(groups)[len(self.kills) % len(groups)]
        name, addr = groups[ex][0]
        self.times.append(time.perf_counter())
        self.fleet.procs[name].kill()  # SIGKILL
        self.fleet.procs[name].wait()
        self.kills.append(name)
        self.live.discard(name)
        if self.on_kill is not None:
            self.on_kill(name)
        if self.restart:
            thread = threading.Thread(target=self._restart, args=(name, ex, addr), daemon=True)
            thread.start()
            self.restarts.append(thread)

    def _restart(self, name, ex, addr) -> None:
        started = time.perf_counter()
        self.fleet.start(name, ex, addr, background=True)  # a fresh replica comes back on the same address
        try:
            wait_healthy(self.fleet.fleet, name, self.fleet.procs[name], addr, 120)
            os.sched_setscheduler(self.fleet.procs[name].pid, os.SCHED_OTHER, os.sched_param(0))  # now it serves
            self.recoveries.append(time.perf_counter() - started)
            self.live.add(name)
        except Exception as exc:  # reported; the run goes on with one replica fewer
            self.errors.append(f"replacement {name} did not come back: {exc}")


def fault_run(reference: Side, faulty: Side, batch, new_tokens: int, seconds: float, restart: bool = False,
              say=print, label: str = "", retire=None) -> dict:
    """Interleave rounds until the faulty side decoded for `seconds`; kill a replica every ~10 s of it.

    `retire(name)`: called after each kill (not with restart), to take the reference fleet's replica of the
    same name out of its table gracefully, so both fleets keep the same number of serving processes: on a
    host shared with other work, fewer processes get a smaller share of the cores (CFS shares CPU by runnable
    task), which is the shrinking fleet's cost, not the kill's."""
    errors: list[str] = []
    warm = SamplingParams(max_tokens=2, ignore_eos=True)
    for side in (reference, faulty):
        side.engine.generate(batch, warm)  # connections, first calls
    killer = Killer(faulty.fleet, restart, errors, None if restart else retire)
    next_kill, i = KILL_EVERY_S, 0
    while faulty.seconds < seconds:
        side = reference if i % 4 in (0, 3) else faulty
        i += 1
        timer = None
        if side is faulty and killer.can_kill():
            expected = (faulty.seconds / len(faulty.rounds)) if faulty.rounds else reference.seconds
            if faulty.seconds + expected / 2 >= next_kill:  # this round reaches the kill time: kill mid-round
                timer = threading.Timer(expected / 2, killer.kill_one)
                timer.start()
                next_kill += KILL_EVERY_S
        one_round(side, batch, new_tokens, errors)
        if timer is not None:
            timer.join()
    for thread in killer.restarts:
        thread.join()
    ratio = faulty.tok_s / reference.tok_s
    say(f"{label}faults: {len(killer.kills)} replicas SIGKILLed in {faulty.seconds:.0f} s of decode "
        f"({', '.join(killer.kills)}); throughput {faulty.tok_s:.1f} vs {reference.tok_s:.1f} tok/s on an identical "
        f"fleet without faults, rounds interleaved: ratio {ratio:.3f} (target >= 0.98); failed requests "
        f"{faulty.failed} (fault-free fleet: {reference.failed}); "
        + (f"replacements restarted on this machine served again after {', '.join(f'{r:.1f}' for r in killer.recoveries)} s"
           if restart else "killed replicas not restarted (see --restart-on-this-machine)"))
    spread = lambda s: f"{min(s.rounds):.0f}-{max(s.rounds):.0f}"  # noqa: E731
    say(f"  rounds: {len(faulty.rounds)} faulty ({spread(faulty)} tok/s), {len(reference.rounds)} fault-free "
        f"({spread(reference)} tok/s); CPU per token (gateway + experts) {1e3 * faulty.cpu / faulty.tokens:.3f} ms "
        f"with faults, {1e3 * reference.cpu / reference.tokens:.3f} ms without")
    say("  " + kill_disruption(faulty.steps, killer.times))
    for e in errors[:3]:
        say("  error:", e[:300])
    return {"fault_over_fault_free": round(ratio, 3), "fault_failed_requests": faulty.failed,
            "fault_kills": len(killer.kills), "fault_errors": errors[:3],
            "fault_tok_s": {"faulty": round(faulty.tok_s, 1), "fault_free": round(reference.tok_s, 1)},
            "fault_cpu_ms_per_token": {"faulty": round(1e3 * faulty.cpu / faulty.tokens, 3),
                                       "fault_free": round(1e3 * reference.cpu / reference.tokens, 3)}}


def cpu_seconds(fleet) -> float:
    """CPU seconds (user + system) of this process, its reaped children (a killed replica's CPU moves
    there when it is reaped) and the fleet's live expert processes."""
    reaped = os.times()
    return (time.process_time() + reaped.children_user + reaped.children_system
            + sum(_proc_cpu(p.pid) for p in fleet.procs.values() if p.returncode is None))


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_disruption(steps: list[tuple[float, float]], kill_times: list[float]) -> str:
    """What each kill cost the decode steps around it, against the steps of the 2 s before it."""
    parts = []
    for k in kill_times:
        before = [d for s, d in steps if k - 2.0 <= s and s + d <= k]
        if not before:
            continue
        typical = statistics.median(before)
        hit = next(((s, d) for s, d in steps if s <= k < s + d), None)
        after = [d for s, d in steps if k < s < k + 1.0]
        extra = sum(d - typical for d in after) + (hit[1] - typical if hit else 0.0)
        parts.append((f"step in flight {hit[1] * 1e3:.0f} ms" if hit else "between steps")
                     + f" (median before {typical * 1e3:.0f} ms), then {len(after)} steps: "
                     f"{extra * 1e3:+.0f} ms in all")
    return "per kill: " + "; ".join(parts) if parts else ""
