"""Building blocks the QC methods share: segqc's own reference segmenter, sampling of the
user's model (MC dropout, TTA, ensembles), registration (RCA), LightGBM text boosters, the
mapping of masks into model space and the scoring of a candidate against a pseudo ground truth."""
