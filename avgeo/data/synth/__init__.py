"""avg-synth: a synthetic audiovisual geolocation benchmark in AVG layout (mp4 clips + Parquet manifest).

`run_synth(synth_preset("ci"), out_dir, seed)` builds one; docs/avg-synth.md describes the generative
model, its knobs and how to read results obtained on it.
"""

from avgeo.data.synth.build import run_synth
from avgeo.data.synth.config import AudioKnobs, SynthConfig, VisualKnobs, synth_preset

__all__ = ["AudioKnobs", "SynthConfig", "VisualKnobs", "run_synth", "synth_preset"]
