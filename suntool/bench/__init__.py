"""suntool.bench: load-testing an OpenAI-compatible server (see docs/serving.md, `suntool bench`).

Modules: `workload` (Poisson arrivals, Zipf popularity, prompts from the synthetic tasks),
`client` (httpx streaming, per-token client-side timing), `report` (percentiles, goodput,
ratios, bench.json + bench.png), `runner` (`run_bench`: a URL, or local artifacts on a
server it starts; `--compare` shared vs `--no-share`). Importing this package imports
nothing heavy.
"""
