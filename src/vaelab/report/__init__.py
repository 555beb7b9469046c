"""`vaelab compare`'s report over runs: its rows (`rows`, built on `vaelab.frames`), its
table (`table`: Markdown and CSV, with the dashboards' cells from `links`), its figures
(`figures`, drawn by `charts`)."""
