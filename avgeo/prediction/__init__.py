"""Prediction: Riemannian flow matching on S² and the baseline heads."""
