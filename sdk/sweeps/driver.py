"""`python -m sdk.sweeps.driver SWEEP_URI --token T`: the detached process that runs a sweep's trials
(`drive`, below), under the lease its starter wrote with token T."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sdk.core.errors import RunNotFound, StoreError
from sdk.core.spec import FineTuneSpec
from sdk.store import open_store
from sdk.sweeps.handle import Sweep
from sdk.sweeps.lease import (
    LeaseLost,
    SweepBusy,
    _check_free,
    _new_lease,
    lease_seconds,
)
from sdk.sweeps.record import FINAL, SweepRecord, Trial
from sdk.sweeps.spend import SpendWatch

LAUNCH_ATTEMPTS = 2  # a launch that raised is tried once more (same run id, so the same cluster) before the trial fails:
LAUNCH_RETRY_S = 30.0  # a SkyPilot API server still starting or a provisioning hiccup should not cost a trial
LAUNCH_GRACE_S = 3600.0  # a run folder a resumed driver finds without a launch record: how long its node has to report
STORE_PATIENCE_S = 1800.0  # store errors in a row before a driver gives up (its lease then expires: resume it)
RETRY_DELAYS_S = (5, 15, 30, 60, 120, 300)  # teardowns and cancels that failed are tried again after these
PASS_PATIENCE_S = 1800.0  # a pass of the loop blocked this long (a teardown queued behind launches): the lease lapses


def drive(handle: Sweep, *, poll: float = 1.0, max_hours: float = 168.0, token: str | None = None,
          submit: Callable[..., Any] | None = None) -> SweepRecord:
    """Drive the sweep until every trial is final and released, or until CANCEL has been carried out.
    Refuses (SweepBusy) while another driver holds a live lease; stops without writing (LeaseLost) once
    another driver has taken over."""
    return _Driver(handle, poll=poll, max_hours=max_hours, token=token, submit=submit).run()


class _Driver:
    """Keeps up to max_parallel trials launching or running (launches run in threads: a SkyPilot launch blocks
    for its provisioning, and trials must not queue behind each other's), records each (its run id before the
    launch), tears down a finished trial's cluster where its infra leaves it up (retrying until it succeeds),
    obeys CANCEL, and ends when all are final. Only this driver writes sweep.json, and only under its lease."""

    def __init__(self, handle: Sweep, *, poll: float, max_hours: float, token: str | None, submit: Callable[..., Any] | None):
        import secrets

        self.handle, self.poll = handle, poll
        self.deadline = time.time() + max_hours * 3600
        self.max_hours = max_hours
        self.handed_over = token is not None
        self.token = token or secrets.token_hex(8)
        self.submit = submit or self._launch
        self.serial = threading.Lock()
        self.launching: dict[int, Any] = {}  # trial index -> Future of its launch
        self.retry_at: dict[int, float] = {}  # trial index -> earliest next try of a failed cancel
        self.cancel_tries: dict[int, int] = {}
        self.cancel_sent: set[int] = set()
        self.cancelling = False
        self.cancel_deadline = float("inf")
        self.writing = threading.Lock()  # the loop's writes and the heartbeat's renewals, one at a time
        self.written: SweepRecord | None = None  # the record as last written: what a renewal writes again
        self.pass_started = time.time()
        self.spend = SpendWatch(handle)

    # -- the lease

    def _acquire(self) -> SweepRecord:
        record = self.handle.record()
        if self.handed_over:  # started by hand_over: its starter writes a lease naming our PID right after starting us
            deadline = time.time() + 30
            while (record.lease is None or record.lease.token != self.token or record.lease.pid != os.getpid()) \
                    and time.time() < deadline:
                time.sleep(0.2)
                record = self.handle.record()
            if record.lease is None or record.lease.token != self.token:
                raise SweepBusy(f"sweep {self.handle.id}: the lease this driver was started for never came")
        if record.finished:
            return record
        _check_free(self.handle, record, token=self.token)
        record.lease = _new_lease(self.token, os.getpid())
        record.driver = {"host": record.lease.host, "pid": os.getpid(), "started": time.time()}
        self.handle._write(record)
        time.sleep(min(1.0, lease_seconds() / 10))  # two drivers taking over at the same moment: the later write wins
        if (self.handle.record().lease or record.lease).token != self.token:
            raise SweepBusy(f"sweep {self.handle.id}: another driver took it over at the same moment")
        return record

    def _write(self, record: SweepRecord) -> None:
        with self.writing:
            current = self.handle.record().lease
            if current is None or current.token != self.token:
                raise LeaseLost(f"sweep {self.handle.id}: taken over by "
                                f"{current.describe() if current else 'another driver'}; this driver stops")
            record.lease = current.model_copy(update={"expires": time.time() + lease_seconds()})
            self.handle._write(record)
            self.written = record.model_copy(deep=True)

    def _heartbeat(self, stop: threading.Event) -> None:
        """Renews the lease while a pass of the loop blocks on a backend (a SkyPilot teardown queues behind another
        trial's launch for minutes): the lease says the driver lives, so it lapses only when the process ends or a
        pass has been stuck for PASS_PATIENCE_S. It writes the record as last written, so it loses nothing."""
        while not stop.wait(lease_seconds() / 3):
            written = self.written
            if written is None or time.time() - self.pass_started > PASS_PATIENCE_S:
                continue
            if written.lease is not None and written.lease.expires - time.time() >= lease_seconds() * 2 / 3:
                continue  # renewed within the last third of the lease (the loop's own writes): no second PUT
            try:
                self._write(written)
            except (StoreError, RunNotFound):
                continue  # the loop meets the outage too, and retries
            except LeaseLost:
                return  # the loop finds out at its next write and stops

    # -- launching

    def _launch(self, spec: FineTuneSpec, backend: str, run_id: str) -> Any:
        from sdk.backends import get_backend
        from sdk.runs import submit as submit_run

        impl = get_backend(backend)
        if impl.serial_launch(spec):
            with self.serial:  # one launch at a time onto this infra; the trials still run side by side
                self._still_ours()
                return submit_run(spec, backend=backend, check_data=False, run_id=run_id)
        self._still_ours()
        return submit_run(spec, backend=backend, check_data=False, run_id=run_id)

    def _still_ours(self) -> None:
        """Checked in the launch thread right before a launch: a driver that lost its lease launches nothing."""
        lease = self.handle.record().lease
        if lease is None or lease.token != self.token:
            raise LeaseLost(f"sweep {self.handle.id}: taken over; launch skipped")

    @staticmethod
    def _folder(trial: Trial) -> Any:
        from sdk.store.runfolder import RunFolder

        return RunFolder(open_store(FineTuneSpec.model_validate(trial.spec).output), trial.run_id)

    def _adopt(self, trial: Trial) -> bool:
        """A trial whose run id was recorded but whose launch did not come back to this driver: its run folder
        says whether it started. True when adopted (it will not be launched again)."""
        from sdk.store.runfolder import LAUNCH

        folder = self._folder(trial)
        if not folder.exists():
            return False
        trial.uri = folder.uri
        launch = folder.read_json(LAUNCH)
        if launch:
            trial.backend, trial.info = launch.get("backend"), launch.get("info")
        else:  # the launch was cut short before it recorded its backend: the node may still report
            trial.adopted = trial.adopted or time.time()
        return True

    def _collect(self, record: SweepRecord) -> None:
        for index, future in list(self.launching.items()):
            if not future.done():
                continue
            trial = record.trials[index]
            del self.launching[index]
            try:
                run = future.result()
            except Exception as exc:  # a trial that cannot start does not stop the sweep
                try:
                    if trial.run_id and self._adopt(trial):  # its folder exists: another driver launched it, or
                        continue                             # the launch failed after creating it (its status says)
                except (StoreError, RunNotFound):
                    continue  # the store is down: the next passes adopt or relaunch it (_heal)
                if isinstance(exc, LeaseLost):
                    continue
                trial.launch_attempts += 1
                if trial.launch_attempts < LAUNCH_ATTEMPTS:
                    trial.state, trial.next_launch = "pending", time.time() + LAUNCH_RETRY_S
                    trial.error = f"launch failed, trying again in {LAUNCH_RETRY_S:.0f} s: {exc}"
                    print(f"{trial.name}: {trial.error}", flush=True)
                else:
                    trial.state, trial.error = "failed", f"launch failed ({trial.launch_attempts} tries): {exc}"
                continue
            trial.uri, trial.backend, trial.error = run.uri, run.backend, None
            trial.info = run.info.model_dump(mode="json") if run.info is not None else None

    def _start_trials(self, record: SweepRecord, pool: Any) -> None:
        busy = len(self.launching) + sum(1 for t in record.trials if t.uri and t.state not in FINAL)
        for trial in record.trials:
            if busy >= record.max_parallel:
                return
            if trial.uri or trial.state != "pending" or trial.index in self.launching:
                continue
            if trial.next_launch is not None and time.time() < trial.next_launch:
                continue
            blocked = self.spend.blocks(record, trial)  # --budget: the actual spend so far plus this trial's estimate
            if blocked:
                for left in (t for t in record.trials if not t.uri and t.state == "pending"):
                    left.state, left.error = "cancelled", blocked
                return
            before = trial.model_copy()
            # one id per trial of this sweep: two drivers that both launch it collide on its folder instead of
            # starting it twice (submit refuses an existing folder; the loser adopts it)
            trial.run_id = trial.run_id or f"{trial.name}-{record.sweep_id[-20:]}-t{trial.index}"
            trial.state, trial.launched = "provisioning", time.time()
            try:
                self._write(record)  # the run id is in the store before the launch: a resumed driver finds it
            except BaseException:
                record.trials[trial.index] = before  # not recorded: not launched (the next pass tries again)
                raise
            self.launching[trial.index] = pool.submit(self.submit, FineTuneSpec.model_validate(trial.spec), record.backend,
                                                      trial.run_id)
            busy += 1

    # -- watching

    def _heal(self, record: SweepRecord) -> None:
        """Trials marked provisioning that no launch of this driver carries (a launch whose outcome a store outage
        hid, a record left by a killed driver): adopt the run folder, or launch again under the same id."""
        from sdk.store.runfolder import LAUNCH

        for trial in record.trials:
            if trial.index in self.launching or trial.uri or trial.state != "provisioning":
                continue
            if trial.run_id is None:  # a record from before run ids were recorded first: it may have started
                trial.state, trial.error = "failed", "launch interrupted (the driver stopped during it)"
            elif not self._adopt(trial):
                trial.state = "pending"
        for trial in record.trials:  # adopted without its launch record: it may have been written since
            if trial.adopted and not trial.backend and trial.uri:
                launch = self._folder(trial).read_json(LAUNCH)
                if launch:
                    trial.backend, trial.info = launch.get("backend"), launch.get("info")

    def _refresh(self, record: SweepRecord) -> None:
        now = time.time()
        for trial, state, run in self.handle._trial_states(record):
            if not trial.uri:
                continue
            if trial.adopted and not trial.backend and state == "pending" and now - trial.adopted > LAUNCH_GRACE_S:
                run.folder.request_cancel()  # a node that still starts obeys it
                run.folder.write_status("failed", error=f"launch interrupted: the sweep driver stopped during the launch "
                                                        f"and no node reported within {LAUNCH_GRACE_S:.0f} s")
                state = "failed"
            trial.state = state
            if state in FINAL:
                self._release(trial, run, now)
            elif self.cancelling:
                self._cancel(trial, run, now)

    def _release(self, trial: Trial, run: Any, now: float) -> None:
        """A finished trial's cluster goes down where its infra does not take it down itself (Slurm); a teardown
        that fails is tried again, later and later, until it succeeds (a cluster left up keeps billing)."""
        if trial.released or run is None or (trial.next_teardown and now < trial.next_teardown):
            return
        backend = run._backend()
        if backend is not None and backend.left_up(run.info):
            try:
                backend.down(run.info)
            except Exception as exc:  # the error is kept in the trial; the next try is scheduled
                if "does not exist" in str(exc) or "not found" in str(exc).lower():
                    trial.released, trial.next_teardown = True, None  # already gone: nothing bills
                    return
                trial.teardown_attempts += 1
                delay = RETRY_DELAYS_S[min(trial.teardown_attempts, len(RETRY_DELAYS_S)) - 1]
                trial.next_teardown = now + delay
                trial.error = f"teardown failed ({trial.teardown_attempts}x, next try in {delay} s): {exc}"
                return
        if trial.teardown_attempts:
            trial.error = None
        trial.released, trial.next_teardown = True, None

    def _cancel(self, trial: Trial, run: Any, now: float) -> None:
        if run is None or trial.index in self.cancel_sent or now < self.retry_at.get(trial.index, 0.0):
            return
        try:
            if run.info is not None:
                run.cancel()
            else:  # adopted without its backend's record: the node obeys the marker
                run.folder.request_cancel()
            self.cancel_sent.add(trial.index)
        except Exception as exc:
            self.cancel_tries[trial.index] = tries = self.cancel_tries.get(trial.index, 0) + 1
            self.retry_at[trial.index] = now + RETRY_DELAYS_S[min(tries, len(RETRY_DELAYS_S)) - 1]
            trial.error = f"cancel failed ({tries}x): {exc}"

    def _begin_cancel(self, record: SweepRecord, reason: str) -> None:
        """Nothing more launches; launches under way finish (SkyPilot cannot be interrupted mid-provision) and are
        cancelled by the loop; trials never launched are cancelled; running ones are cancelled (retried)."""
        self.cancelling = True
        self.cancel_deadline = max(self.deadline, time.time() + 60)
        for future in self.launching.values():
            future.cancel()
        for trial in record.trials:
            if trial.index in self.launching and self.launching[trial.index].cancelled():
                del self.launching[trial.index]
                if trial.run_id and not self._adopt(trial):
                    trial.state, trial.error = "cancelled", reason
            elif not trial.uri and trial.index not in self.launching and trial.state in ("pending", "provisioning"):
                trial.state, trial.error = "cancelled", reason
        self._write(record)

    # -- the loop

    def _step(self, record: SweepRecord, pool: Any) -> bool:
        """One pass; True when the sweep is finished."""
        self._collect(record)
        self._heal(record)
        self._refresh(record)
        if not self.cancelling and (self.handle.cancel_requested() or time.time() > self.deadline):
            reason = "sweep cancelled" if self.handle.cancel_requested() else f"sweep driver stopped after {self.max_hours} h"
            self._begin_cancel(record, reason)
        over = None if self.cancelling else self.spend.over(record)
        if over:
            self._begin_cancel(record, over)
        if not self.cancelling:
            self._start_trials(record, pool)
        settled = all(t.state in FINAL and (t.released or not t.uri) for t in record.trials)
        if not self.launching and settled:
            self.spend.refresh(record, force=True)  # each trial's final cost, its cluster down
            record.finished = True
            self._write(record)
            return True
        return False

    def run(self) -> SweepRecord:
        from concurrent.futures import ThreadPoolExecutor

        record = self._acquire()
        if record.finished:
            return record
        self._heal(record)  # trials a previous driver recorded but did not see launched
        self._write(record)
        failing_since: float | None = None
        failures = 0
        stop = threading.Event()
        threading.Thread(target=self._heartbeat, args=(stop,), name="lease", daemon=True).start()
        with ThreadPoolExecutor(max_workers=record.max_parallel, thread_name_prefix="launch") as pool:
            try:
                while True:
                    self.pass_started = time.time()
                    try:
                        if self._step(record, pool):
                            return record
                        if self.cancelling and time.time() > self.cancel_deadline:  # left to `sweep resume` / cancel
                            self._write(record)
                            return record
                        lease = record.lease
                        due = lease is None or lease.expires - time.time() < lease_seconds() * 2 / 3
                        changed = record.model_dump(exclude={"lease"}) != self.written.model_dump(exclude={"lease"})
                        if due or changed:
                            self._write(record)  # one PUT per change or renewal, not per poll (S3 bills requests)
                        failing_since, failures = None, 0
                    except (StoreError, RunNotFound) as exc:  # the store is down or throttling: keep what we know, retry
                        failing_since = failing_since or time.time()
                        failures += 1
                        if time.time() - failing_since > STORE_PATIENCE_S:
                            raise
                        delay = min(60.0, 2.0 ** failures)
                        print(f"sweep {self.handle.id}: store error ({failures}x, retrying in {delay:.0f} s): {exc}", flush=True)
                        time.sleep(delay)
                        continue
                    time.sleep(self.poll)
            finally:
                stop.set()
                for future in self.launching.values():
                    future.cancel()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    handle = Sweep.from_uri(args.uri)

    def on_term(signum, frame):  # a shutdown or logout stops the driver, not the sweep: `finetune sweep resume`
        raise SystemExit(143)  # goes on later; only `finetune cancel` cancels the trials

    signal.signal(signal.SIGTERM, on_term)
    try:
        record = drive(handle, poll=args.poll, token=args.token)
    except (SweepBusy, LeaseLost) as exc:  # another driver has the sweep: this one leaves it alone
        print(f"sweep {handle.id}: {exc}", flush=True)
        return 0
    state = "done" if record.finished else "stopped with trials left (finetune sweep resume)"
    print(f"sweep {record.sweep_id}: {state}; " + ", ".join(f"{t.name} {t.state}" for t in record.trials), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
