"""Files on disk: a leaf layer that imports only torch, safetensors, numpy, the standard library and transmamba.io."""
