"""`vaelab compare`'s report over runs: its rows (`rows`, built on `vaelab.frames`), its
table (`table`: Markdown and CSV, each dashboard's column from `vaelab.dashboards`), its
figures (`figures`, drawn by `charts`)."""
