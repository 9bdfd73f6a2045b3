"""suntool.deploy: SUN / PrefillShare artifacts as a vLLM disaggregated prefill/decode deployment (docs/deploy.md).

Modules: `plan` (DeployConfig -> DeployPlan: which vLLM instances, which routes, which K/V keys),
`files` (writing the plan: launch scripts, connector, README, docker-compose), `vllm_connector`
(the KV connector vLLM loads; imports vLLM, never imported by suntool itself), `router` (the
OpenAI-compatible front), `metrics` (its Prometheus metrics), `launch` (running a plan as local
processes). Importing this package imports nothing heavy.
"""
