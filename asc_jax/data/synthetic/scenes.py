"""Scene recipes: one function per acoustic scene class, mixing sources on a canvas."""
from __future__ import annotations

from typing import Callable

import numpy as np

from asc_jax.data.synthetic import dsp, sources
from asc_jax.registry import Registry


# A scene adds its parts to the canvas from two generators: `loc` draws the location's
# character (identical for every recording of that place, always drawn in the same order)
# and `rec` the recording's own events.
SceneFn = Callable[[dsp.Canvas, np.random.Generator, np.random.Generator], None]
SCENES: Registry[SceneFn] = Registry("synthetic scene")


@SCENES.register("airport")
def _airport(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, rt60, hum, chime = loc.integers(4, 8), loc.uniform(1.2, 2.0), loc.uniform(50, 120), loc.uniform(500, 800)
    c.bed(rec, c.bp(60, 5000) * c.tilt(-3), 0.0)
    c.add_spectrum(sources.babble(rec, n, sr, talkers), -2.0)
    c.signal(sources.engine(rec, n, sr, hum), -12.0, c.bp(20, 400, 3))  # air handling
    c.bed(rec, c.bp(200, 2000), -8.0, env=dsp.slow(rec, n, sr, 1.5) ** 2)  # rolling suitcases
    c.events(sources.bell(rec, n, sr, chime, 0.3, (1.0, 2.0, 3.0), 0.4), -4.0)
    c.reverb(rt60, 0.6)


@SCENES.register("bus")
def _bus(c, loc, rec):
    n, sr = c.n, c.sr
    f0, talkers = loc.uniform(25, 45), loc.integers(1, 4)
    c.signal(sources.engine(rec, n, sr, f0), 0.0, c.bp(20, 350, 3))
    c.bed(rec, c.bp(20, 250) * c.tilt(-6), -3.0)
    c.add_spectrum(sources.babble(rec, n, sr, talkers), -9.0)
    c.events(sources.impacts(rec, n, sr, 3.0, 0.004), -15.0, c.bp(2000, 6000))  # rattles
    c.reverb(0.3, 0.3)


@SCENES.register("metro")
def _metro(c, loc, rec):
    n, sr = c.n, c.sr
    whine_lo, rate, resonance = loc.uniform(150, 300), loc.uniform(1.5, 3.0), loc.uniform(500, 2000)
    c.bed(rec, c.bp(100, 4000) * dsp.peak(n, sr, resonance, 10, 0.3), 0.0)
    c.signal(sources.whine(rec, n, sr, whine_lo, 3.0), -4.0)
    c.events(sources.clatter(rec, n, sr, rate), -3.0)
    c.add_spectrum(sources.babble(rec, n, sr, 2), -15.0)
    c.reverb(0.5, 0.3)


@SCENES.register("metro_station")
def _metro_station(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, rt60, squeal = loc.integers(5, 10), loc.uniform(1.6, 2.6), loc.uniform(2500, 4500)
    arrival = dsp.slow(rec, n, sr, 0.3) ** 3
    c.bed(rec, c.bp(50, 6000) * c.tilt(-3), -3.0)
    c.add_spectrum(sources.babble(rec, n, sr, talkers), 0.0)
    c.signal(arrival * (sources.whine(rec, n, sr, 120, 4.0) + 0.5 * dsp.sines(dsp.phase(squeal, sr, n), (1.0,), (1.0,))), -2.0)
    c.events(sources.bell(rec, n, sr, 1000.0, 0.15, (1.0,), 0.08), -8.0)  # PA beeps
    c.reverb(rt60, 0.7)


@SCENES.register("park")
def _park(c, loc, rec):
    n, sr = c.n, c.sr
    bird, rate, wind_cut = loc.uniform(2500, 5000), loc.uniform(2.0, 6.0), loc.uniform(300, 600)
    c.bed(rec, c.bp(100, 8000) * c.tilt(-3), -10.0)
    c.bed(rec, c.bp(20, wind_cut) * c.tilt(-6), -2.0, env=0.2 + dsp.slow(rec, n, sr, 0.7))  # wind gusts
    c.events(sources.chirps(rec, n, sr, rate, bird), 0.0)
    c.bed(rec, c.bp(20, 150) * c.tilt(-6), -10.0)  # distant traffic


@SCENES.register("public_square")
def _public_square(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, fountain = loc.integers(6, 13), loc.uniform(-12, -3)
    c.add_spectrum(sources.babble(rec, n, sr, talkers), 0.0)
    c.events(sources.impacts(rec, n, sr, rec.uniform(3, 6), 0.012, thump=1.0), -6.0, c.bp(150, 4000))  # footsteps
    c.bed(rec, c.bp(800, 10000), fountain)
    c.bed(rec, c.bp(20, 200) * c.tilt(-6), -8.0)
    c.reverb(0.4, 0.15)


@SCENES.register("shopping_mall")
def _shopping_mall(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, music_db, rt60, key = loc.integers(8, 15), loc.uniform(-8, -3), loc.uniform(1.0, 1.6), loc.uniform(180, 330)
    c.add_spectrum(sources.babble(rec, n, sr, talkers), 0.0)
    c.signal(sources.music(rec, n, sr, key), music_db)
    c.events(sources.impacts(rec, n, sr, rec.uniform(2, 4), 0.01, thump=0.5), -10.0, c.bp(200, 5000))
    c.reverb(rt60, 0.6)


@SCENES.register("street_pedestrian")
def _street_pedestrian(c, loc, rec):
    n, sr = c.n, c.sr
    talkers, traffic = loc.integers(3, 7), loc.uniform(0.1, 0.3)
    c.add_spectrum(sources.babble(rec, n, sr, talkers), 0.0)
    c.events(sources.impacts(rec, n, sr, rec.uniform(4, 8), 0.012, thump=1.0), -3.0, c.bp(150, 4000))
    sources.vehicles(c, rec, traffic, 1.2, -5.0)
    c.bed(rec, c.bp(50, 4000) * c.tilt(-3), -6.0)
    c.reverb(0.3, 0.15)


@SCENES.register("street_traffic")
def _street_traffic(c, loc, rec):
    n, sr = c.n, c.sr
    rate, width, horn = loc.uniform(0.5, 1.2), loc.uniform(0.5, 1.5), loc.uniform(350, 500)
    c.bed(rec, c.bp(20, 200) * c.tilt(-6), 0.0)
    sources.vehicles(c, rec, rate, width, 0.0)
    c.events(sources.bell(rec, n, sr, horn, 0.1, (1.0, 2.0, 3.0, 4.0), 0.6), -4.0)  # horns


@SCENES.register("tram")
def _tram(c, loc, rec):
    n, sr = c.n, c.sr
    whine_lo, bell, squeal = loc.uniform(80, 200), loc.uniform(900, 1600), loc.uniform(2000, 4000)
    c.bed(rec, c.bp(60, 400) * c.tilt(-6), -2.0)
    c.signal(sources.whine(rec, n, sr, whine_lo, 2.5), -3.0)
    c.events(sources.bell(rec, n, sr, bell, 0.25, (1.0, 2.0, 2.4, 3.0, 4.5, 5.3), 0.35), 0.0)
    c.events(dsp.slow(rec, n, sr, 0.5) ** 6 * dsp.sines(dsp.phase(squeal, sr, n), (1.0,), (1.0,)), -8.0)  # rail squeal
    c.add_spectrum(sources.babble(rec, n, sr, loc.integers(1, 4)), -10.0)
    c.reverb(0.4, 0.3)
