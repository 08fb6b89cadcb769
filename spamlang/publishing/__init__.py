"""Publishing results: merging result folders, ranking head designs, and writing the leaderboard (Markdown, CSV, a
self-contained HTML page, plots) with its provenance. Reads what the scorer computes; computes no science itself."""
