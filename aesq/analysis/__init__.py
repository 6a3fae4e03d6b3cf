"""Analysis of scored assets: statistics, aggregation, defects, critiques, reports, labels and export."""
