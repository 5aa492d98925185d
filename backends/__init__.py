"""pedagle backends: engine adapters (vLLM, SGLang) built on pedagle_core."""
