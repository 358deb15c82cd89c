"""CLIP-guided diffusion, the pure torch parts: OpenAI's ADM U-Net (`unet`), Katherine Crowson's secondary model
(`secondary`), the Gaussian diffusion arithmetic (`gaussian`), step-wise DDIM/PLMS samplers (`samplers`) and CLIP
guidance on the predicted clean image (`guidance`). No printing, no files, no CLI."""
