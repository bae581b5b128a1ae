"""Everything a person looks at: charts, the HTML page, the latent-action pictures, the demo's
report and the reproduction grid's summaries.

- :mod:`lapo.report.charts`: learning curves, confusion matrix, returns (matplotlib);
- :mod:`lapo.report.html`: one self-contained HTML page;
- :mod:`lapo.report.latents`: ``lapo lam plot``: UMAP of latents, what each cluster of latents
  does, world-model predictions, GIF;
- :mod:`lapo.report.demo`: the demo's ``report.html``;
- :mod:`lapo.report.grid`: ``lapo reproduce``'s ``results.csv``, ``summary.md`` and figures.
"""
