"""Network building blocks shared by QC methods (torch is imported inside the modules)."""
