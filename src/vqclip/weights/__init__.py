"""VQGAN and CLIP weights: `registry` (the table), `store` (folder, manifest), `resolve` (name or path → files),
`download` (HTTP, hashing), `model_yaml`, `pickle_scan` (torch-free), `checkpoint` (safe load, safetensors cache;
torch), `installed` (status, verify, remove), `clip` (hub cache). Nothing is re-exported: import the module."""
