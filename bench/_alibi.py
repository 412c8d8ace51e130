"""Alibi Detect's side of ``bench/drift_quality.py``, run as a child process.

Alibi Detect 0.13 pins ``numpy<2`` and ``numba<0.60`` while Sentinelle's River
needs ``numpy>=2.2.5``, so the two cannot share an interpreter: the bench runs
this script with the interpreter of a separate environment where Alibi Detect
is installed (``--alibi-python``), and talks to it over pipes:

1. stdin, first line: the job (JSON): reference samples, ERT, window sizes,
   stream lengths, repetitions, seeds;
2. this process configures the thresholds, then runs the stationary streams
   and the detection-delay runs, one feature per task in a pool of worker
   processes (while the parent measures Sentinelle), printing progress lines
   on stderr;
3. stdin, second line: ``speed``, sent once the parent is idle; this process
   then times ``predict`` alone on the machine and writes the results (JSON)
   on stdout.

Only numpy, ``_synthetic`` and Alibi Detect are imported here.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import sys
import time
from typing import Any

import _synthetic as syn
import numpy as np


def log(msg: str) -> None:
    print(f"[alibi] {msg}", file=sys.stderr, flush=True)


def make_factory(job: dict[str, Any], thresholds: np.ndarray | None = None
                 ) -> tuple[Any, np.ndarray, float]:
    """A constructor of configured ``CVMDriftOnline`` detectors, the thresholds, the time.

    The CVM online thresholds are simulated from Gaussian streams (the statistic
    is rank based, hence the same for every continuous law) and depend only on
    the reference size, the window sizes, the ERT and the number of bootstrap
    streams, not on the reference values: they are configured once (unless
    ``thresholds`` are given) and shared by the features' detectors, which is
    what Alibi Detect would compute for each of them.
    """
    from alibi_detect.cd import CVMDriftOnline

    cache: dict[str, np.ndarray] = {} if thresholds is None else {"t": thresholds}

    class SharedThresholds(CVMDriftOnline):
        thresholds: np.ndarray

        def _configure_thresholds(self) -> None:
            if "t" not in cache:
                super()._configure_thresholds()
                cache["t"] = self.thresholds.copy()
            self.thresholds = cache["t"].copy()

    def make(x_ref: np.ndarray) -> Any:
        return SharedThresholds(x_ref, ert=job["ert"], window_sizes=job["window_sizes"],
                                n_bootstraps=job["n_bootstraps"],
                                batch_size=job["batch_size"], verbose=False)

    # Alibi simulates with the global numpy generator: seed it, for the same
    # thresholds from run to run (unseeded, the final threshold varied from 5.2
    # to 5.9 between runs here: n_bootstraps just over the ERT is a noisy tail).
    np.random.seed(syn.SEED % 2**32)
    t0 = time.perf_counter()
    make(np.asarray(job["x_ref"][job["features"][0]], dtype=float))
    return make, cache["t"], time.perf_counter() - t0


def drifted(det: Any, x: np.ndarray, i: int) -> bool:
    return bool(det.predict(x[i:i + 1], return_test_stat=False)["data"]["is_drift"])


def stationary(det: Any, feat: syn.Feature, n: int, min_ws: int, fi: int) -> dict[str, Any]:
    """False alarms on ``n`` stationary events: each detection counts once, then a reset."""
    x = feat.draw(syn.rng_for(1, fi, 2), n)
    det.reset_state()
    alarms = monitored = 0
    t0 = time.perf_counter()
    for i in range(n):
        hit = drifted(det, x, i)
        if det.t >= min_ws:
            monitored += 1
        if hit:
            alarms += 1
            det.reset_state()
    return {"events": monitored, "stream_events": n, "alarms": alarms,
            "seconds": time.perf_counter() - t0}


def delay_run(det: Any, feat: syn.Feature, shift: float, arm: int, pre: int, cap: int,
              keys: tuple[int, ...]) -> int | None:
    """Events after the change until the first detection; -1: detected before; None: missed."""
    rng = syn.rng_for(2, *keys)
    change = arm + pre
    x = np.concatenate([feat.draw(rng, change), feat.draw(rng, cap, shift)])
    det.reset_state()
    for i in range(x.size):
        if drifted(det, x, i):
            return -1 if i < change else i - change + 1
    return None


def feature_work(job: dict[str, Any], thresholds: np.ndarray, name: str) -> dict[str, Any]:
    """One feature's stationary stream and delay runs (in a worker process)."""
    make, _, _ = make_factory(job, thresholds)
    det = make(np.asarray(job["x_ref"][name], dtype=float))
    feat = {f.name: f for f in syn.NUMERIC}[name]
    fi = syn.FEATURES.index(feat)
    ws: list[int] = job["window_sizes"]
    t0 = time.perf_counter()
    stat = stationary(det, feat, job["stationary_events"], min(ws), fi)
    delays = {str(s): [delay_run(det, feat, s, 2 * max(ws), job["pre_events"], job["cap"],
                                 (fi, si, r)) for r in range(job["reps"])]
              for si, s in enumerate(job["shifts"])}
    log(f"  {name} done in {time.perf_counter() - t0:.1f} s")
    return {"stationary": stat, "delays": delays}


def main() -> int:
    job = json.loads(sys.stdin.readline())
    import alibi_detect
    import numba

    feats = {f.name: f for f in syn.NUMERIC}
    names: list[str] = job["features"]
    ws: list[int] = job["window_sizes"]
    arm = 2 * max(ws)
    out: dict[str, Any] = {
        "version": alibi_detect.__version__, "python": platform.python_version(),
        "numpy": np.__version__, "numba": numba.__version__,
    }
    log(f"configuring CVMDriftOnline thresholds: ERT {job['ert']:,}, windows {ws}, "
        f"reference {len(job['x_ref'][names[0]])} values, {job['n_bootstraps']:,} bootstrap "
        "streams (once, shared by the features) ...")
    make, thresholds, config_s = make_factory(job)
    out["config"] = {"seconds": config_s, "threshold": float(thresholds[-1, 0]),
                     "t_max": int(thresholds.shape[0])}
    log(f"configured in {config_s:.1f} s")

    workers = min(job["workers"], len(names))
    log(f"stationary streams ({len(names)} features x {job['stationary_events']:,} events) "
        f"and detection delays ({len(names)} features x {len(job['shifts'])} shifts x "
        f"{job['reps']} runs), {workers} processes ...")
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        parts = pool.starmap(feature_work, [(job, thresholds, n) for n in names])
    out["stationary"] = {n: p["stationary"] for n, p in zip(names, parts, strict=True)}
    out["delays"] = {n: p["delays"] for n, p in zip(names, parts, strict=True)}
    out["delay_setup"] = {"arm": arm, "pre": job["pre_events"], "cap": job["cap"],
                          "reps": job["reps"]}
    log(f"stationary streams and delays done in {time.perf_counter() - t0:.1f} s; waiting "
        "for the parent before timing predict() alone")

    dets = {n: make(np.asarray(job["x_ref"][n], dtype=float)) for n in names}
    if sys.stdin.readline().strip() == "speed":
        total = secs = 0.0
        for n in names:
            det = dets[n]
            x = feats[n].draw(syn.rng_for(3, syn.FEATURES.index(feats[n])),
                              arm + job["speed_events"])
            det.reset_state()
            for i in range(arm):
                det.predict(x[i:i + 1], return_test_stat=False)
            t0 = time.perf_counter()
            for i in range(arm, x.size):
                det.predict(x[i:i + 1], return_test_stat=False)
            secs += time.perf_counter() - t0
            total += x.size - arm
        out["speed"] = {"events": int(total), "seconds": secs}
        log(f"timed {int(total):,} predict() calls: {total / secs:,.0f} events/s")
    json.dump(out, sys.stdout)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
