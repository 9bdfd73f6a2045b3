"""suntool.simulate: a discrete-event simulator of a disaggregated multi-model cluster.

Modules, one job each: `workload` (requests: Zipf over models, Poisson/bursty arrivals,
lengths, shared prefixes), `hardware` (device table), `modelcfg` (model shapes),
`profile` (measured cost profiles: schema and interpolation), `costs` (roofline and
profile cost models), `cluster` (which instances hold which models per layout), `sim`
(the event loop), `metrics` (summaries), `runner` (layouts, SLO searches, sweeps),
`report` (JSON and plot). Importing this package imports nothing heavy.
"""
