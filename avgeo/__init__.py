"""avgeo: audiovisual geolocation of video (perception -> reasoning -> prediction), Ray-free library."""

__version__ = "0.1.0"
