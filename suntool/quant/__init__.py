"""4-bit (2/3/4/8-bit) weight-only GPTQ for QSUN's shared decode module.

Nothing here is imported by `suntool/__init__.py`; import the submodules you need:

- `suntool.quant.packing`: the standard GPTQ "v1" checkpoint layout (qweight/qzeros/scales/g_idx),
  exact pack/unpack and dequantize.
- `suntool.quant.rtn`: round-to-nearest group quantization (the quantization grid GPTQ also uses).
- `suntool.quant.gptq`: the GPTQ algorithm on one weight matrix, given its Hessian.
- `suntool.quant.quantize_model`: quantize every linear of a causal LM's decoder layers, layer by
  layer, and save the result as an ordinary GPTQ checkpoint.
- `suntool.quant.qlinear`: `QuantLinear` (the runtime module) and `load_quantized`, a loader that
  needs neither gptqmodel nor optimum.
"""
