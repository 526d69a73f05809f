"""Plan: the reference data's fingerprint → the decisions every method follows (`Plan`),
and the transform of a case into model space with its exact inverse (`preprocess`)."""
