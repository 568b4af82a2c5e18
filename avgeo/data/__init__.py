"""Data: the AVG manifest, video/audio decoding, the avg-synth benchmark and the MART sound bank."""
