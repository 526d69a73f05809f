"""The pipeline: fit a bundle (`fit`), save and load it (`bundle`), answer cases with it
(`answer`), and stream many cases to rows, maps and the site estimate (`run`)."""
