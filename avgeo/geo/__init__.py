"""Geometry of the Earth: sphere maths, S2 cells, places and their polygons, metrics."""
