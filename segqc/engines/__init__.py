"""Engines that run a scorer over many cases: row by row in this process, with resume
(`batch`), or on Ray (`ray_engine`). Splitting a run into parts is `segqc.pipeline.parts`."""
