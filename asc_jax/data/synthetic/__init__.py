"""The embedded demo dataset: synthetic acoustic scenes in the exact TAU22 / DCASE2024 layout.

Why: the real TAU Urban Acoustic Scenes 2022 Mobile set is 23 GB and cannot ship with the
repo, but every pipeline stage (splits, devices, KD stores, evaluation per device) should run
end to end out of the box. This generator writes 1-s, 44.1 kHz, 16-bit PCM clips whose ten
classes have genuinely different textures and whose recording devices are distinct filters
plus noise and gain, so that both the class signal and the device mismatch are real.

Structure mirrors TAU: a *location* (identifier `city-N`) fixes a scene's character (talker
count, reverberation, tonal frequencies, event rates); a *recording* (10-s segment in TAU,
`clips_per_recording` seconds here) is rendered continuously from its own seed and cut into
1-s clips, so the clips of one recording share their sound; each recording comes from one
device. Development-train and test use disjoint locations; training uses devices a, b, c,
s1-s3, the test split all nine devices (s4-s6 are unseen). Nested splits split5 ⊂ split10 ⊂
split25 ⊂ split50 ⊂ split100 select whole recordings, equally many per class, interleaving
devices so every split keeps a similar device mix (the DCASE2024 split rules).

Everything derives from `seed` through per-location / per-recording seed sequences, so output
is bit-identical whatever the worker count or generation order.

CLI: python -m asc_jax.data.synthetic --out data/synthetic

Modules, in the order the audio is made:
  dsp.py         float32 spectral primitives and the Canvas a recording is mixed on
  sources.py     sound sources (babble, engines, whine, impacts, birdsong, bells, vehicles, music)
  scenes.py      SCENES: one recipe per class, mixing sources with the location's character
  devices.py     DEVICE_MODELS and apply_device: a scene recorded through a device
  profiles.py    PROFILES: "easy" (each recording its own recipe alone; unit tests) and
                 "realistic" (shared sources, per-clip mixtures, place colouration, stronger
                 devices; the demos), chosen by SyntheticConfig.profile
  recordings.py  SyntheticConfig, Recording, plan (recordings and nested splits), render_recording
  dataset.py     generate / ensure_dataset: audio/, meta.csv, split files, marker; the CLI's main
"""
from asc_jax.data.synthetic.dataset import GENERATOR_VERSION, MARKER, ensure_dataset, generate, main
from asc_jax.data.synthetic.devices import DEVICE_MODELS, DeviceModel, apply_device
from asc_jax.data.synthetic.profiles import PROFILES, Profile
from asc_jax.data.synthetic.recordings import (
    CITIES, TRAIN_SPLITS, Recording, SyntheticConfig, plan, render_recording)
from asc_jax.data.synthetic.scenes import SCENES

__all__ = [
    "GENERATOR_VERSION", "MARKER", "ensure_dataset", "generate", "main",
    "DEVICE_MODELS", "DeviceModel", "apply_device",
    "PROFILES", "Profile",
    "CITIES", "TRAIN_SPLITS", "Recording", "SyntheticConfig", "plan", "render_recording",
    "SCENES",
]
