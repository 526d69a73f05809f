"""Calibration: a method's raw score → calibrated Dice, P(Dice ≥ τ) and intervals
(`calibrator`), the fusion of several methods (`fusion`), and the site-level estimate
over a batch (`population`)."""
