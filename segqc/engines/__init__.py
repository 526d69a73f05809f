"""Engines that run a scorer over many cases: row by row with resume (`batch`), on Ray
(`ray_engine`), or in parts that `segqc merge` joins (`shards`)."""
