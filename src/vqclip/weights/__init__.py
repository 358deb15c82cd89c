"""VQGAN and CLIP weights: `registry` (the table), `store` (folder, manifest), `resolve` (name or path → files),
`download` (HTTP, hashing), `model_yaml` (taming yaml checks), `pickle_scan` (torch-free), `checkpoint` (safe load,
safetensors cache; torch), `installed` (status, verify, remove), `clip` (hub cache; may a run fetch?), `hub`
(verified fetch from the Hugging Face hub), `clip_config` (a user's open_clip model-config JSON checked).
Nothing is re-exported: import the module."""
