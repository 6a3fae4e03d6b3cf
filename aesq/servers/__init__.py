"""Long-running servers that are not flows: the bucket-notification bridge and the scoring-pool worker."""
