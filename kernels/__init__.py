"""Triton kernels of suntool, one op per file, each beside its pure-torch reference ``<op>_ref``.

- ``rmsnorm``: ``rmsnorm``, ``rmsnorm_residual`` (Gemma offset supported)
- ``rotary``: ``apply_rotary`` (HF ``rotate_half`` convention, partial rotary)
- ``paged_attention``: ``paged_attention`` (one query per sequence over a block-paged KV cache)
- ``w4a16``: ``w4a16_matmul`` on GPTQ-packed weights, ``pack_int4``/``pack_zeros`` and their inverses
- ``w4a16_cpu``: ``pack_for_cpu``, ``w4a16_matmul_cpu``: the same GPTQ matmul on CPU in bf16 through PyTorch's
  int4 CPU op (no Triton; the CPU fast path of quantized decode halves)
- ``affine_attention``: ``affine_attention`` (Affine-Scaled Attention forward, reference backward)
- ``dispatch``: ``backend()`` picks Triton or the reference per call (env ``SUNTOOL_KERNELS``)

Importing any of these modules imports neither torch nor triton; both load on first use.
"""
