"""Perception: frozen visual (GeoCLIP) and audio (CLAP) encoders, the IC-SAE and MART."""
