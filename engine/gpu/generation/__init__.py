"""Text-to-image with any pet's LoRA on the one resident SDXL (issue 4)."""
