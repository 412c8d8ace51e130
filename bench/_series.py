"""Labelled synthetic operational series for ``bench/anomaly_quality.py``.

numpy only. Each series is two weeks of one metric sampled every 5 minutes
(with a little jitter on the timestamps and a few missing points, as scrapers
deliver them), drawn from one of five *profiles* shaped like the series people
watch in production (and like the Numenta Anomaly Benchmark's AWS CloudWatch
and "known cause" series):

- ``cpu``: CPU utilisation in %: a business-hours bump, AR(1) noise with
  Student-t innovations (bursty), clipped to 0..100;
- ``latency``: request latency in ms: multiplicative daily load effect and
  log-normal noise (heavy right tail);
- ``requests``: request counts per interval: Poisson around a daily cycle with
  quieter weekends (noise grows with the level);
- ``disk``: disk write bytes: log-normal noise plus a nightly backup burst at a
  fixed hour, 5-10x the usual level, which is *normal* (a seasonal peak);
- ``temperature``: a slowly wandering level (AR(1) close to a random walk) with
  small noise, like a machine's temperature sensor.

Anomalies start after two and a half days (the detectors' two-day warm-up
and the seasonal profile's first days) and are at least a day and a half
apart. Kinds, with the window
in which an alert counts as a detection (from the anomaly's start):

- ``spike``: 1 to 3 points far above the usual range (a latency or CPU spike,
  a burst of requests); window 1 h;
- ``dip``: the level falls by 60-95 % for 30-90 min (a partial outage, a
  stalled writer); window = duration + 1 h;
- ``level_shift``: the level moves by 4-8 noise widths (or 40-100 % for the
  multiplicative profiles) and stays there until the end; window 6 h (on a
  multiplicative series a shift at night is small until the morning);
- ``trend``: a ramp away from the usual level over 4-8 h, then a plateau; a
  slow leak; window = ramp duration + 2 h;
- ``variance``: the noise grows 4-6x for 1-3 h (erratic behaviour before a
  failure); window = duration + 1 h.

Magnitudes are relative to each series' own noise so that every anomaly is
plain to a person looking at the chart, and none is so large that any rule
would catch it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Anomaly", "Series", "PROFILES", "KINDS", "make_series", "make_set"]

DT = 300.0
DAY = 86_400.0
DAYS = 14
PROFILES = ("cpu", "latency", "requests", "disk", "temperature")
KINDS = ("spike", "dip", "level_shift", "trend", "variance")
T0 = 1_700_006_400.0  # a Wednesday, 00:00 UTC


@dataclass(frozen=True)
class Anomaly:
    kind: str
    start: float      # event time of its first point
    end: float        # end of the window in which an alert counts
    start_index: int


@dataclass
class Series:
    name: str
    profile: str
    ts: np.ndarray
    values: np.ndarray
    anomalies: list[Anomaly] = field(default_factory=list)


def _tod(ts: np.ndarray) -> np.ndarray:
    """Hours of the day, 0..24."""
    return (ts % DAY) / 3600.0


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    """A smooth daily bump in 0..1 (raised cosine, ``width`` hours wide)."""
    d = np.abs((hours - centre + 12.0) % 24.0 - 12.0)
    return np.where(d < width / 2, 0.5 * (1 + np.cos(np.pi * d / (width / 2))), 0.0)


def _ar1(rng: np.random.Generator, n: int, phi: float, innov: np.ndarray) -> np.ndarray:
    out = np.empty(n)
    acc = 0.0
    for i in range(n):
        acc = phi * acc + innov[i]
        out[i] = acc
    return out


def _base(profile: str, rng: np.random.Generator,
          ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool, float]:
    """(clean signal, noise, multiplicative?, noise width) for one profile."""
    n = ts.size
    hours = _tod(ts)
    weekday = ((ts - T0) // DAY + 2) % 7  # T0 is a Wednesday (2)
    weekend = weekday >= 5
    if profile == "cpu":
        level = rng.uniform(15, 45)
        amp = rng.uniform(0.0, 0.6) * level
        signal = level + amp * _bump(hours, rng.uniform(11, 16), rng.uniform(8, 12))
        sd = rng.uniform(1.0, 3.0)
        noise = _ar1(rng, n, 0.6, sd * 0.8 * rng.standard_t(4, n) / np.sqrt(2))
        return signal, noise, False, sd
    if profile == "latency":
        level = rng.uniform(40, 250)
        load = 1 + rng.uniform(0.1, 0.6) * _bump(hours, rng.uniform(10, 18), 10)
        sigma = rng.uniform(0.08, 0.2)
        noise = rng.normal(0, sigma, n)
        return level * load, noise, True, sigma
    if profile == "requests":
        rate = rng.uniform(30, 600)
        cycle = 0.25 + 0.75 * _bump(hours, rng.uniform(12, 16), 16)
        cycle = cycle * np.where(weekend, rng.uniform(0.5, 0.8), 1.0)
        lam = rate * cycle
        noise = rng.poisson(lam) - lam  # additive, grows with the level
        return lam, noise, False, float(np.sqrt(rate * 0.6))
    if profile == "disk":
        level = rng.uniform(1e5, 5e6)
        burst_at = rng.uniform(0, 24)
        burst = _bump(hours, burst_at, 1.0) > 0
        signal = level * (1 + np.where(burst, rng.uniform(5, 10), 0.0))
        sigma = rng.uniform(0.15, 0.3)
        return signal, rng.normal(0, sigma, n), True, sigma
    if profile == "temperature":
        level = rng.uniform(60, 90)
        sd = rng.uniform(0.3, 0.8)
        wander = _ar1(rng, n, 0.995, rng.normal(0, sd * 0.3, n))
        return level + wander, rng.normal(0, sd, n), False, sd
    raise ValueError(profile)


def make_series(index: int, seed: int, kinds: tuple[str, ...] | None = None) -> Series:
    """Series number ``index`` of the set drawn with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    profile = PROFILES[index % len(PROFILES)]
    n = DAYS * int(DAY / DT)
    ts = T0 + np.arange(n) * DT + rng.uniform(-5, 5, n)
    signal, noise, mult, width = _base(profile, rng, ts)
    # anomalies: 2 or 3, the first after day 2.5, >= 1.5 days apart
    if kinds is None:
        k = int(rng.integers(2, 4))
        kinds = tuple(KINDS[(index * 3 + j) % len(KINDS)] for j in range(k))
    starts = []
    t = T0 + 2.5 * DAY + rng.uniform(0, DAY)
    for _ in kinds:
        starts.append(t)
        t += rng.uniform(1.5, 3.0) * DAY
    anomalies = []
    factor = np.ones(n)      # multiplicative effects on the clean signal
    offset = np.zeros(n)     # additive effects
    noise_gain = np.ones(n)
    for kind, start in zip(kinds, starts, strict=True):
        if start > ts[-1] - 6 * 3600:
            break
        i0 = int(np.searchsorted(ts, start))
        start = float(ts[i0])
        sign = 1.0 if rng.random() < 0.7 else -1.0
        if kind == "spike":
            m = int(rng.integers(1, 4))
            size = rng.uniform(3, 8) if mult else rng.uniform(8, 16) * width
            if mult:
                factor[i0:i0 + m] *= 1 + size
            else:
                offset[i0:i0 + m] += size
            end = start + 3600
        elif kind == "dip":
            m = int(rng.integers(6, 19))
            factor[i0:i0 + m] *= 1 - rng.uniform(0.6, 0.95)
            if profile in ("cpu", "temperature"):  # these do not scale to zero
                factor[i0:i0 + m] = 1.0
                offset[i0:i0 + m] -= rng.uniform(6, 10) * width
            end = start + m * DT + 3600
        elif kind == "level_shift":
            if mult:
                factor[i0:] *= 1 + sign * rng.uniform(0.4, 1.0) * (0.6 if sign < 0 else 1)
            elif profile == "requests":
                factor[i0:] *= 1 + sign * rng.uniform(0.4, 0.7)
            else:
                offset[i0:] += sign * rng.uniform(4, 8) * width
            end = start + 6 * 3600
        elif kind == "trend":
            dur = rng.uniform(4, 8) * 3600
            ramp = np.clip((ts - start) / dur, 0, 1)
            if mult or profile == "requests":
                factor *= 1 + sign * rng.uniform(0.5, 1.0) * 0.8 * ramp
            else:
                offset += sign * rng.uniform(6, 10) * width * ramp
            end = start + dur + 2 * 3600
        elif kind == "variance":
            m = int(rng.integers(12, 37))
            noise_gain[i0:i0 + m] = rng.uniform(4, 6)
            end = start + m * DT + 3600
        else:
            raise ValueError(kind)
        anomalies.append(Anomaly(kind, start, end, i0))
    if mult:
        values = signal * factor * np.exp(noise * noise_gain) + offset
    else:
        values = signal * factor + offset + noise * noise_gain
    if profile == "cpu":
        values = np.clip(values, 0, 100)
    if profile in ("requests", "disk", "latency"):
        values = np.maximum(values, 0)
    if profile == "requests":
        values = np.round(values)
    keep = rng.random(n) > 0.003  # a few missing points, never an anomaly's first
    for a in anomalies:
        keep[a.start_index] = True
    ts, values = ts[keep], values[keep]
    anomalies = [Anomaly(a.kind, a.start, a.end, int(np.searchsorted(ts, a.start)))
                 for a in anomalies]
    return Series(f"{profile}-{index}", profile, ts, values.astype(float), anomalies)


def make_set(count: int, seed: int) -> list[Series]:
    return [make_series(i, seed) for i in range(count)]
