"""The comparison report (`results/report.html`): one self-contained page that compares the base model with every
variant's ablated and healed model.

`load` reads the results tree defensively (a stage or feature that is off leaves its files absent and the page says
so), `tables` turns the figures into the verdict and success-criteria tables, `plots` draws matplotlib figures as base64
PNG data URIs, `render` fills the Jinja2 template (autoescape, StrictUndefined), and `ab` summarises the variants over
replicates for the A/B table. A rendered page is checked in headless Chromium by `bruno_tools.browser` (tests and the
README screenshot).
"""
