"""``lapo play``: a stage-1 world model as a game in the browser.

- :mod:`lapo.play.session`: the world-model stepping, the latent buttons, the history;
- :mod:`lapo.play.server`: the local HTTP server and its JSON API; ``page.html``: the page.
"""
