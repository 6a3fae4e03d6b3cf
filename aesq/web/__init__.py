"""The web application `aesq serve` runs: JSON API, dashboard pages, templates and static files."""
