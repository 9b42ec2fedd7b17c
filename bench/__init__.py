"""`make bench`: measure neon-local against its floors in one run and write bench/results.md."""
